"""docs/own-data.md runs as written, at toy scale: its first bash block, command by command.

The photos are a dozen generated pictures in coco-mini's and imagenet-samples' layout (COCO
captions JSON, uncaptioned JPEGs), ``$PHOTOS`` points at them, and ``unitok train`` gets a
budget of a few steps per training stage; everything else is the page's text. ``unitok serve``
runs in a subprocess on a free port and answers a caption request.
"""

import base64
import io
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from unitok.cli import main as unitok_main

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
TOY_BUDGET = ["--budget", "tokenizer=3", "--budget", "lm=3"]  # steps


def walkthrough() -> list[str]:
    """The first ```bash block of the page as commands (continuation lines joined, comments dropped)."""
    block = re.search(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S).group(1)
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            commands.append(line)
    return commands


def photo(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        draw.ellipse((x, y, x + 20 + rng.integers(0, 40), y + 20 + rng.integers(0, 40)),
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


def toy_photos(root: Path) -> None:
    """imagenet-samples/*.JPEG and coco-mini/{train2017,val2017,annotations} with a few pictures."""
    rng = np.random.default_rng(0)
    (root / "imagenet-samples").mkdir(parents=True)
    for index, name in enumerate(["n01440764_tench", "n01443537_goldfish", "n01514859_hen", "n01518878_ostrich"]):
        photo(rng, (150 + 10 * index, 120)).save(root / "imagenet-samples" / f"{name}.JPEG")
    annotations = root / "coco-mini" / "annotations"
    annotations.mkdir(parents=True)
    words = ["a dog on a beach", "a red bus in a street", "two cats on a sofa", "a plate of food"]
    for split, ids in (("train2017", range(1, 7)), ("val2017", [139, 802, 11813])):
        (root / "coco-mini" / split).mkdir()
        images, captions = [], []
        for image_id in ids:
            file_name = f"{image_id:012d}.jpg"
            photo(rng, (140, 170)).save(root / "coco-mini" / split / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": 140, "height": 170})
            captions += [{"id": 10 * image_id + k, "image_id": image_id, "caption": words[(image_id + k) % 4]}
                         for k in range(2)]
        (annotations / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": captions}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_and_caption(argv: list[str], image: Path) -> str:
    """Run ``unitok serve ARGV`` on a free port, caption ``image`` through the chat API, stop it."""
    port = free_port()
    argv = [*argv[:argv.index("--port")], "--port", str(port), "--host", "127.0.0.1"]
    server = subprocess.Popen([sys.executable, "-m", "unitok.cli", *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("unitok serve did not come up in 120 s")
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        png = io.BytesIO()
        Image.open(image).save(png, format="PNG")
        content = [{"type": "text", "text": "Describe this image."},
                   {"type": "image_url",
                    "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}}]
        response = httpx.post(f"{url}/v1/chat/completions", timeout=120,
                              json={"model": model, "messages": [{"role": "user", "content": content}]})
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_own_data_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    toy_photos(tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    variables: dict[str, str] = {}
    commands = walkthrough()
    assert [c.split()[:2] for c in commands if c.startswith("unitok")] == [
        ["unitok", "train"], ["unitok", "generate"], ["unitok", "caption"], ["unitok", "eval"], ["unitok", "eval"],
        ["unitok", "tokenizer"], ["unitok", "serve"]]
    for command in commands:
        if re.fullmatch(r"\w+=\S+", command):  # PHOTOS=../shared/photos: the toy photos instead
            variables[command.split("=")[0]] = str(tmp_path / "photos")
            continue
        argv = shlex.split(re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], command))[1:]
        if argv[0] == "serve":
            assert isinstance(serve_and_caption(argv, tmp_path / "photos/coco-mini/val2017/000000000139.jpg"), str)
            continue
        if argv[0] == "train":
            argv += TOY_BUDGET
        assert unitok_main(argv) == 0, command
    run = tmp_path / "runs" / "coco"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "runs"]  # nothing outside runs/ (and the input)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["coco"]
    assert {p.stem for p in (run / "stages").iterdir()} == {"data", "tokenizer", "codes", "lm", "assemble"}
    assert Image.open(run / "dog.png").size == (128, 128)
    for report in ("eval-tokenizer/report.json", "eval-captions/report.json", "stats/stats.json"):
        assert json.loads((run / report).read_text())
    out = capsys.readouterr()
    assert "imagenet-samples: 4 train; 4 without captions" in out.out + out.err
