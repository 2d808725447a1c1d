"""The HTTP API against a real uvicorn server on 127.0.0.1 (a free port) and a real tiny pipeline.

The pipeline is random (built in a second), so captions are gibberish — but they are the
pipeline's real greedy captions, different for each image, which is what the batching checks
need: 32 concurrent requests must get exactly the captions that one-at-a-time requests get.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import struct
import subprocess
import sys
import time
import zlib

import httpx
import image_variants
import numpy as np
import pytest
import torch
from PIL import Image

from generation.random_model import random_pipeline
from unitok.api.app import Batching, create_app
from unitok.api.backend import PipelineBackend
from unitok.api.images import Limits
from unitok.api.server import serve_in_background
from unitok.data.shapes import Scene, ShapeObject, random_scene, render
from unitok.lm.model import ScratchConfig

LIMITS = Limits(max_body_bytes=256 * 1024, max_images=4, max_image_pixels=128 * 128, max_prompt_chars=200, max_n=4)
CAPTION_TOKENS = 12


def tiny_pipeline():
    # A wide init (0.3) makes the random LM's greedy captions depend on the image, so batching
    # mistakes would show; 8x8 code grids keep drawing fast.
    return random_pipeline(
        ScratchConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=2, intermediate_size=64,
                      max_positions=160, initializer_range=0.3),
        dict(image_size=32, block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
             latent_channels=16, codebook_size=64, codebook_dim=4),
        text_vocab_size=300,
        seed=0,
    )


@pytest.fixture(scope="module")
def backend():
    return PipelineBackend(tiny_pipeline(), name="tiny-random", max_caption_tokens=CAPTION_TOKENS)


@pytest.fixture(scope="module")
def url(backend):
    app = create_app(backend, limits=LIMITS, batching=Batching(max_batch=8, max_wait_ms=20))
    with serve_in_background(app) as base_url:
        yield base_url


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client
        # Whatever the test sent, the server must still answer.
        assert client.get("/healthz").json()["status"] == "ok"


def scene_png(seed: int, size: int = 64) -> bytes:
    buffer = io.BytesIO()
    render(random_scene(np.random.default_rng(seed)), size).save(buffer, format="PNG")
    return buffer.getvalue()


def as_file(data: bytes, name: str = "scene.png") -> tuple[str, tuple[str, bytes, str]]:
    return ("images", (name, data, "image/png"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` pixels: a decompression bomb's signature."""
    data = bytearray(scene_png(0, 16))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])))
    return bytes(data)


def noisy_png(size: int = 64) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# -- good requests --------------------------------------------------------------------------------


def test_health_models_and_docs(client):
    health = client.get("/healthz").json()
    assert health["model"] == "tiny-random" and health["batching"]["max_batch"] == 8
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-random"
    assert "swagger" in client.get("/docs").text.lower()
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/captions", "/v1/images/generations", "/v1/models", "/healthz"} <= set(paths)


def test_captions_from_multipart_and_json_are_the_pipelines_captions(client, backend):
    images = [scene_png(1), scene_png(2)]
    expected = backend.pipeline.caption([Image.open(io.BytesIO(d)) for d in images], max_new_tokens=CAPTION_TOKENS)
    multipart = client.post("/v1/captions", files=[as_file(d) for d in images])
    assert multipart.status_code == 200, multipart.text
    body = multipart.json()
    assert body["captions"] == expected and body["model"] == "tiny-random"
    assert set(body["timings_ms"]) == {"decode", "queue", "model", "total"}
    as_json = client.post("/v1/captions", json={"images": [b64(d) for d in images]})
    assert as_json.json()["captions"] == expected
    data_url = client.post("/v1/captions", json={"images": ["data:image/png;base64," + b64(images[0])]})
    assert data_url.json()["captions"] == expected[:1]


def test_generation_returns_seeded_pngs_independent_of_the_batch(client, backend):
    response = client.post("/v1/images/generations",
                           json={"prompt": "a red circle", "n": 2, "guidance_scale": 2.0, "seed": 7})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["seed"] for d in data] == [7, 8]
    assert [d["revised_prompt"] for d in data] == ["a red circle"] * 2  # this model does not rewrite
    images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in data]
    assert all(im.format == "PNG" and im.size == (32, 32) for im in images)
    assert images[0].tobytes() != images[1].tobytes()
    # Image 2 drawn alone from seed 8 is the same image: seeds, not batch neighbours, decide.
    alone = client.post("/v1/images/generations",
                        json={"prompt": "a red circle", "guidance_scale": 2.0, "seed": 8}).json()["data"][0]
    assert alone["b64_json"] == data[1]["b64_json"]
    direct = backend.pipeline("a red circle", guidance_scale=2.0, generator=torch.Generator().manual_seed(8)).images[0]
    assert direct.tobytes() == images[1].tobytes()
    # Without a seed the server picks one and reports it.
    unseeded = client.post("/v1/images/generations", json={"prompt": "a blue square"}).json()["data"][0]
    assert isinstance(unseeded["seed"], int)
    # Each image carries the model's own consistency score and the prompt's warnings (extensions).
    output = backend.pipeline("a red circle", num_images_per_prompt=2, guidance_scale=2.0,
                              generator=[torch.Generator().manual_seed(s) for s in (7, 8)])
    assert [d["consistency"] for d in data] == [round(c, 4) for c in output.consistency]
    assert all(0.0 <= d["consistency"] <= 1.0 and d["warnings"] == output.warnings[0] for d in data)


def test_a_model_that_rewrites_prompts_reports_what_it_drew(client, backend, monkeypatch):
    restated = "a large blue square at the top left on a white background"
    # What a trained rewriter would do (the tiny random LM restates nothing).
    from generation.rewriting import PromptRewrite

    monkeypatch.setattr(backend.pipeline, "rewrites",
                        lambda prompts, batch_size=16: [PromptRewrite(restated, "", True)] * len(prompts))
    backend.pipeline.register_to_config(default_rewrite_prompts=True)
    try:
        data = client.post("/v1/images/generations", json={"prompt": "a big blue square, upper left", "seed": 3,
                                                           "guidance_scale": 2.0}).json()["data"]
    finally:
        backend.pipeline.register_to_config(default_rewrite_prompts=False)
    assert data[0]["revised_prompt"] == restated
    direct = backend.pipeline(restated, guidance_scale=2.0, generator=torch.Generator().manual_seed(3)).images[0]
    assert Image.open(io.BytesIO(base64.b64decode(data[0]["b64_json"]))).tobytes() == direct.tobytes()


def test_turned_transparent_and_16_bit_images_are_read_as_their_upright_rgb_twins(client):
    def caption(data: bytes) -> str:
        return client.post("/v1/captions", files=[as_file(data)]).json()["captions"][0]

    scene = Scene("white", (ShapeObject("top left", "large", "red", "circle"), ShapeObject("bottom", "small", "blue", "plus")))
    upright = render(scene, 64)
    expected = caption(image_variants.encoded(upright, "PNG"))
    turned_pixels = image_variants.encoded(upright.transpose(Image.Transpose.ROTATE_90), "PNG")
    assert caption(turned_pixels) != expected  # the model sees the difference, so the checks below mean something
    assert caption(image_variants.exif_turned(upright, "PNG")) == expected
    assert caption(image_variants.transparent(upright)) == expected
    gray = upright.convert("L").convert("RGB")
    assert caption(image_variants.gray16(gray)) == caption(image_variants.gray_alpha(gray)) \
        == caption(image_variants.encoded(gray, "PNG"))


def test_concurrent_requests_are_batched_and_match_serial_captions(url, client):
    images = [scene_png(100 + i) for i in range(32)]
    serial = [client.post("/v1/captions", files=[as_file(d)]).json()["captions"][0] for d in images]
    assert len(set(serial)) > 16, "the tiny model must tell images apart for this test to mean anything"
    before = client.get("/healthz").json()["batching"]["captions"]

    async def send_all():
        async with httpx.AsyncClient(base_url=url, timeout=120) as async_client:
            # Mixed shapes of request: one image as a file, or two as base64 JSON.
            requests = []
            for i in range(32):
                if i % 4 == 3:
                    pair = [b64(images[i]), b64(images[(i + 1) % 32])]
                    requests.append(async_client.post("/v1/captions", json={"images": pair}))
                else:
                    requests.append(async_client.post("/v1/captions", files=[as_file(images[i])]))
            return await asyncio.gather(*requests)

    responses = asyncio.run(send_all())
    assert all(r.status_code == 200 for r in responses)
    for i, response in enumerate(responses):
        expected = [serial[i], serial[(i + 1) % 32]] if i % 4 == 3 else [serial[i]]
        assert response.json()["captions"] == expected, f"request {i} got another request's captions"
    after = client.get("/healthz").json()["batching"]["captions"]
    batches, items = after["batches"] - before["batches"], after["items"] - before["items"]
    assert items == 40 and batches < items / 2, f"{items} images in {batches} model calls: not coalesced"
    assert after["largest_batch"] == 8


def test_concurrent_generations_match_one_at_a_time(url, client):
    bodies = [{"prompt": prompt, "guidance_scale": scale, "seed": seed, "n": n}
              for prompt, scale, seed, n in [("a red circle", 3.0, 1, 1), ("a large blue square at the top left", 1.0, 2, 2),
                                             ("green", 5.0, 3, 1), ("a red circle", 0.0, 4, 1)]]
    alone = [client.post("/v1/images/generations", json=body).json()["data"] for body in bodies]

    async def send_all():
        async with httpx.AsyncClient(base_url=url, timeout=120) as async_client:
            return await asyncio.gather(*(async_client.post("/v1/images/generations", json=b) for b in bodies))

    together = [response.json()["data"] for response in asyncio.run(send_all())]
    assert together == alone
    assert client.get("/healthz").json()["batching"]["generations"]["largest_batch"] > 1


# -- bad requests: a 4xx JSON error that says what was wrong -------------------------------------

BAD_CAPTION_REQUESTS = {
    "not an image": (dict(files=[as_file(b"hello, I am text", "notes.png")]), 415, "not an image"),
    "zero bytes": (dict(files=[as_file(b"", "empty.png")]), 400, "empty"),
    "truncated": (dict(files=[as_file(noisy_png()[:3000])]), 400, "truncated"),
    "decompression bomb": (dict(files=[as_file(png_claiming_size(5_000, 5_000))]), 400, "5000x5000"),
    "bomb over Pillow's own limit": (dict(files=[as_file(png_claiming_size(50_000, 50_000))]), 400,
                                     "far too many pixels"),
    "real image over the pixel limit": (dict(files=[as_file(scene_png(3, size=200))]), 400, "200x200"),
    "too many files": (dict(files=[as_file(scene_png(i)) for i in range(5)]), 422, "at most 4"),
    "too many base64 images": (dict(json={"images": [b64(scene_png(i)) for i in range(5)]}), 422, "at most 4"),
    "no images": (dict(json={"images": []}), 422, "at least 1"),
    "bad base64": (dict(json={"images": ["not base64!"]}), 422, "base64"),
    "base64 of a non-image": (dict(json={"images": [b64(b"plain text")]}), 415, "not an image"),
    "url": (dict(json={"images": ["https://example.com/cat.png"]}), 422, "URLs are not fetched"),
    "url in a form field": (dict(files=[as_file(scene_png(1))], data={"images": "http://example.com/a.png"}),
                            422, "URLs are not fetched"),
    "number instead of string": (dict(json={"images": [42]}), 422, "images.0"),
    "object instead of list": (dict(json={"images": {"a": "b"}}), 422, "images"),
    "misspelt field": (dict(json={"image": [b64(scene_png(1))]}), 422, "image"),
    "invalid json": (dict(content=b'{"images": [', headers={"content-type": "application/json"}), 400, "JSON"),
    "wrong content type": (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "multipart"),
    "body over the limit": (dict(files=[as_file(noisy_png(300))]), 413, str(LIMITS.max_body_bytes)),
}


@pytest.mark.parametrize("case", list(BAD_CAPTION_REQUESTS))
def test_bad_caption_requests_get_a_clear_4xx(client, case):
    kwargs, status, fragment = BAD_CAPTION_REQUESTS[case]
    response = client.post("/v1/captions", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["status"] == status and fragment.lower() in error["message"].lower(), error


BAD_GENERATION_REQUESTS = {
    "n too large": ({"prompt": "a red circle", "n": 5}, "n"),
    "n zero": ({"prompt": "a red circle", "n": 0}, "n"),
    "n as a string": ({"prompt": "a red circle", "n": "2"}, "valid integer"),
    "n as a bool": ({"prompt": "a red circle", "n": True}, "valid integer"),
    "empty prompt": ({"prompt": ""}, "prompt"),
    "prompt too long": ({"prompt": "x" * 201}, "at most 200"),
    "prompt not a string": ({"prompt": ["a", "b"]}, "prompt"),
    "missing prompt": ({"n": 1}, "prompt: field required"),
    "guidance NaN": ({"prompt": "a red circle", "guidance_scale": float("nan")}, "finite"),
    "guidance infinite": ({"prompt": "a red circle", "guidance_scale": float("inf")}, "finite"),
    "guidance negative": ({"prompt": "a red circle", "guidance_scale": -1.0}, "guidance_scale"),
    "negative seed": ({"prompt": "a red circle", "seed": -3}, "seed"),
    "unknown field": ({"prompt": "a red circle", "negative_prompt": "blue"}, "negative_prompt"),
    "size not a string": ({"prompt": "a red circle", "size": 64}, "size"),
}


@pytest.mark.parametrize("case", list(BAD_GENERATION_REQUESTS))
def test_bad_generation_requests_get_a_422(client, case):
    body, fragment = BAD_GENERATION_REQUESTS[case]
    # json.dumps writes NaN/Infinity, which Python's JSON reader (and so the server) accepts.
    response = client.post("/v1/images/generations", content=json.dumps(body),
                           headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert fragment.lower() in response.json()["error"]["message"].lower()


def test_prompt_too_long_for_the_models_context_is_refused_before_batching(client):
    words = " ".join(["red circle"] * 90)  # under the character limit, over the tiny LM's context
    response = client.post("/v1/images/generations", json={"prompt": words[:200]})
    assert response.status_code == 422 and "prompt is too long" in response.json()["error"]["message"]


def test_chunked_body_over_the_limit_is_cut_off(client):
    def chunks():
        yield b'{"images": ["'
        for _ in range(100):
            yield b"A" * 4096
        yield b'"]}'

    response = client.post("/v1/captions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["type"] == "request_too_large"


def test_unknown_paths_and_methods(client):
    assert client.get("/v1/nothing").status_code == 404
    response = client.get("/v1/captions")
    assert response.status_code == 405 and "GET" in response.json()["error"]["message"]


def test_every_request_writes_one_json_access_line(client, caplog):
    with caplog.at_level(logging.INFO, logger="unitok.api.access"):
        client.post("/v1/captions", files=[as_file(scene_png(1)), as_file(scene_png(2))])
        client.post("/v1/captions", json={"images": ["not base64!"]})
        deadline = time.monotonic() + 5
        while len(caplog.records) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # the server thread logs after the response is sent
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "unitok.api.access"]
    assert [(line["status"], line["n_images"]) for line in lines[:2]] == [(200, 2), (422, 0)]
    assert {"time", "method", "path", "status", "duration_ms", "n_images", "client"} <= set(lines[0])
    assert lines[0]["path"] == "/v1/captions" and lines[0]["client"].startswith("127.0.0.1:")


# -- API key --------------------------------------------------------------------------------------


def test_api_key_guards_the_v1_endpoints(backend):
    app = create_app(backend, limits=LIMITS, api_key="s3cret")
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        image = {"files": [as_file(scene_png(1))]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"}):
            refused = client.post("/v1/captions", headers=headers, **image)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert "Authorization: Bearer" in refused.json()["error"]["message"]
        assert client.get("/v1/models").status_code == 401
        assert client.get("/healthz").status_code == 200  # load balancers probe without a key
        accepted = client.post("/v1/captions", headers={"Authorization": "Bearer s3cret"}, **image)
        assert accepted.status_code == 200


def test_a_request_over_the_queue_limit_gets_503(backend):
    app = create_app(backend, limits=LIMITS, batching=Batching(max_queue=2))
    with serve_in_background(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        refused = client.post("/v1/captions", files=[as_file(scene_png(i)) for i in range(3)])
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "server busy" in refused.json()["error"]["message"]
        assert client.post("/v1/captions", files=[as_file(scene_png(1))]).status_code == 200


# -- the command ----------------------------------------------------------------------------------


def test_serve_help_imports_nothing_heavy():
    code = ("import sys; from unitok.cli import main\n"
            "try:\n    main(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'fastapi', 'uvicorn') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--max-batch" in output and "--max-wait-ms" in output and "UNITOK_API_KEY" in output
    assert "HEAVY []" in output


@pytest.mark.slow
def test_unitok_serve_loads_a_saved_pipeline_and_requires_the_key(tmp_path, backend):
    backend.pipeline.save_pretrained(tmp_path / "tiny-saved")
    with httpx.Client() as probe:
        port = _free_port()
        env = {**os.environ, "UNITOK_API_KEY": "k3y"}
        server = subprocess.Popen(
            [sys.executable, "-m", "unitok.cli", "serve", "--model", str(tmp_path / "tiny-saved"),
             "--port", str(port), "--max-batch", "4", "--torch-threads", "1"],
            env=env, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(probe, url, server)
            response = probe.post(f"{url}/v1/captions", files=[as_file(scene_png(1))],
                                  headers={"Authorization": "Bearer k3y"}, timeout=60)
            assert response.status_code == 200 and response.json()["model"] == "tiny-saved"
            assert probe.get(f"{url}/v1/models").status_code == 401
        finally:
            server.terminate()
            _, log = server.communicate(timeout=60)
    assert "max batch 4, max wait 10 ms, 1 torch threads, API key required" in log
    access = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [(a["path"], a["status"]) for a in access if a["path"].startswith("/v1")] == [
        ("/v1/captions", 200), ("/v1/models", 401)]


def test_unitok_serve_refuses_a_folder_that_is_not_a_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "unitok.cli", "serve", "--model", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "model_index.json" in result.stderr and "Traceback" not in result.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(client: httpx.Client, url: str, server: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.poll() is None, f"server exited: {server.stderr.read() if server.stderr else ''}"
        try:
            if client.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError("server did not become healthy")
