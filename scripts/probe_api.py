"""Probe a real ``unitok serve`` with the hostile workloads of the API-hardening issue, and print
what it measured: idle and stalled connections, image bombs, abandoned generations.

The server runs as a subprocess with its open-file limit set to ``--file-limit`` (so connection
floods meet the limit a production box has), logging to a file whose growth is reported. Its
memory is read from ``/proc/PID/status`` (Linux): ``VmRSS`` now and ``VmHWM`` (the peak).

    .venv/bin/python scripts/probe_api.py                 # the embedded default model
    .venv/bin/python scripts/probe_api.py --model DIR     # a saved pipeline folder

To probe an older checkout's server (a before/after comparison), run it with that checkout first
on ``PYTHONPATH``: the server subprocess inherits it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from unitok.data.shapes import random_scene, render


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mb(pid: int) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` of a process, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def start_server(model: str | None, port: int, file_limit: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "unitok.cli", "serve", "--port", str(port)]
    if model:
        command += ["--model", model]

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))

    server = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, preexec_fn=limit_files,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode}; see {log}")
        time.sleep(0.5)
    server.kill()
    raise SystemExit(f"the server did not answer /healthz within 180 s; see {log}")


def healthz_answer(url: str) -> str:
    """How ``/healthz`` answered: its time, or what went wrong (an older server may not answer)."""
    started = time.perf_counter()
    try:
        response = httpx.get(f"{url}/healthz", timeout=30)
    except httpx.HTTPError as error:
        return f"did not answer ({type(error).__name__} after {time.perf_counter() - started:.1f} s)"
    return f"answered {response.status_code} in {time.perf_counter() - started:.3f} s"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def probe_connections(url: str, port: int, log: Path, silent: int, stalled: int) -> None:
    """Open ``silent`` sockets that send nothing and ``stalled`` uploads that stop mid-body, keep
    them all open from this side, and ask ``/healthz`` 15 s later."""
    log_before = log.stat().st_size
    sockets = []
    for _ in range(silent):
        try:
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    for _ in range(stalled):
        upload = socket.create_connection(("127.0.0.1", port), timeout=5)
        upload.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                       b"Content-Length: 1000000\r\n\r\n" + b"\0" * 1000)
        sockets.append(upload)
    opened = len(sockets)
    time.sleep(15)
    answer = healthz_answer(url)
    for held in sockets:
        held.close()
    grown = (log.stat().st_size - log_before) / 2**20
    print(f"connections: {opened} held open ({silent} silent asked, {stalled} stalled uploads); 15 s later "
          f"/healthz {answer}; the log grew {grown:.3f} MiB")


async def probe_bombs(url: str, pid: int, concurrent: int, per_request: int, side: int) -> None:
    """``concurrent`` caption requests at once, each of ``per_request`` one-colour PNGs of side²."""
    bomb = png_bytes(Image.new("RGB", (side, side), (200, 30, 30)))
    baseline = memory_mb(pid)["VmRSS"]
    peak_before = memory_mb(pid)["VmHWM"]
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        files = [("images", (f"{i}.png", bomb, "image/png")) for i in range(per_request)]
        responses = await asyncio.gather(*(client.post("/v1/captions", files=files) for _ in range(concurrent)))
    statuses = sorted({r.status_code for r in responses})
    after = memory_mb(pid)
    await asyncio.sleep(5)
    settled = memory_mb(pid)["VmRSS"]
    peak_note = ("peak not measurable (an earlier peak is higher)" if after["VmHWM"] <= peak_before
                 else f"peak growth {after['VmHWM'] - baseline:.0f} MiB")
    print(f"bombs: {concurrent} requests x {per_request} one-colour {side}^2 PNGs ({len(bomb) / 1024:.0f} KiB each), "
          f"statuses {statuses}; RSS {baseline:.0f} MiB before, {peak_note}, {after['VmRSS']:.0f} MiB right after, "
          f"{settled:.0f} MiB 5 s later")


async def probe_abandoned(url: str, abandoned: int, n: int) -> None:
    """Start ``abandoned`` generations of ``n`` images, hang up on all, then time one caption."""
    caption_png = png_bytes(render(random_scene(np.random.default_rng(0)), 64))
    async with httpx.AsyncClient(base_url=url, timeout=1.0) as client:
        tasks = [asyncio.create_task(client.post("/v1/images/generations", json={"prompt": f"a red circle {i}", "n": n}))
                 for i in range(abandoned)]
        await asyncio.sleep(0.5)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        started = time.perf_counter()
        response = await client.post("/v1/captions", files=[("images", ("a.png", caption_png, "image/png"))])
        seconds = time.perf_counter() - started
    print(f"abandoned: {abandoned} generations of n={n} started and hung up on; a caption sent next answered "
          f"{response.status_code} in {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a saved pipeline folder (default: the embedded default)")
    parser.add_argument("--file-limit", type=int, default=1024, help="the server's open-file limit")
    parser.add_argument("--silent", type=int, default=1500, help="silent connections to open")
    parser.add_argument("--stalled", type=int, default=10, help="uploads that stop mid-body")
    parser.add_argument("--bomb-side", type=int, default=4096, help="side of each one-colour PNG")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.silent + args.stalled + 256)), hard))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "server.log"
        server = start_server(args.model, port, args.file_limit, log)
        try:
            print(f"server pid {server.pid}, file limit {args.file_limit}, RSS {memory_mb(server.pid)['VmRSS']:.0f} MiB idle")
            probes = {"connections": lambda: probe_connections(url, port, log, args.silent, args.stalled),
                      "bombs": lambda: asyncio.run(probe_bombs(url, server.pid, 4, 16, args.bomb_side)),
                      "abandoned": lambda: asyncio.run(probe_abandoned(url, 10, 8))}
            for name, probe in probes.items():
                try:
                    probe()
                except (httpx.HTTPError, OSError) as error:  # a server that gave way is a result too
                    print(f"{name}: the probe failed: {type(error).__name__}: {error}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
