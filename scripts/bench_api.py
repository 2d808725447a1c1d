"""Benchmark the API with a real ``unitok serve`` subprocess (so client and server do not share a
GIL), one of two workloads:

``--workload captions`` (the default): requests/s and p50/p99 latency of single-image caption
requests (Shapes scenes as PNG) at several concurrencies, with micro-batching on and off side by
side; it also checks that both modes return the same caption for the same image (batching must
not change results).

``--workload mixed``: the latency of honest captions while other clients ask for drawings and
some of them hang up. Captions are measured alone, then beside generation clients that loop on
n-image generations (every other one hanging up after ``--hang-up-s``), in one run; it prints
p50/p99 of both phases, what the drawing clients got, and the server's RSS. ``--server-checkout
DIR`` runs the server from another checkout (e.g. a ``git worktree`` of an older commit), so the
same client measures a before and an after.

    .venv/bin/python scripts/bench_api.py                          # the embedded default model
    .venv/bin/python scripts/bench_api.py --model DIR              # a saved pipeline folder
    .venv/bin/python scripts/bench_api.py --workload mixed --threads 1

Without a default model (and without ``--model``) it builds a tiny random pipeline and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from unitok.data.shapes import random_scene, render


@dataclass
class LevelResult:
    mode: str
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model_dir(args: argparse.Namespace, scratch: Path) -> tuple[str, str]:
    """The model folder to serve and a sentence saying which model it is."""
    from unitok.default_model import default_model_dir, resolve_model_dir
    from unitok.errors import UserError

    if args.model:
        return str(resolve_model_dir(args.model)), f"model: {args.model}"
    try:
        return str(default_model_dir()), f"model: the embedded default model ({default_model_dir()})"
    except UserError:
        pass
    from transformers.utils import logging as transformers_logging

    from generation.random_model import random_pipeline
    from unitok.lm.model import ScratchConfig

    transformers_logging.disable_progress_bar()

    # The default model's architecture with random weights. A wide init (0.3) keeps the random LM
    # from ending every caption at once, so each caption runs its full --max-caption-tokens steps.
    path = scratch / "random-default-architecture"
    random_pipeline(ScratchConfig(initializer_range=0.3), image_positions=True).save_pretrained(path)
    return str(path), ("model: RANDOM weights in the default model's architecture (no embedded default "
                       f"model is installed); captions run {args.max_caption_tokens} tokens each")


def _test_images(count: int, size: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        render(random_scene(rng), size).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


class Server:
    """A ``unitok serve`` subprocess; its log goes to a file so a failure can be shown."""

    def __init__(self, model: str, max_batch: int, args: argparse.Namespace, log_path: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [sys.executable, "-m", "unitok.cli", "serve", "--port", str(self.port), "--model", model,
                   "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms),
                   "--max-caption-tokens", str(args.max_caption_tokens)]
        if args.threads is not None:
            command += ["--threads", str(args.threads)]
        env = {k: v for k, v in os.environ.items() if k != "UNITOK_API_KEY"}
        checkout = args.server_checkout
        if checkout is not None:  # that checkout's code, not this one's
            env["PYTHONPATH"] = str(checkout)
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_path.open("w"), env=env,
                                        cwd=checkout)

    def memory_mib(self) -> dict[str, float]:
        """``VmRSS`` (now) and ``VmHWM`` (peak) of the server process, from ``/proc`` (Linux)."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) / 1024
        return fields

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited with code {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"server did not become ready in {timeout_s:.0f} s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def _caption(client: httpx.AsyncClient, image: bytes) -> tuple[str, float]:
    started = time.perf_counter()
    response = await client.post("/v1/captions", files=[("images", ("scene.png", image, "image/png"))])
    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise SystemExit(f"caption request failed: {response.status_code} {response.text}")
    return response.json()["captions"][0], elapsed_ms


async def _run_level(url: str, images: list[bytes], concurrency: int, requests: int,
                     captions: dict[int, str]) -> tuple[float, list[float]]:
    """Send ``requests`` caption requests, ``concurrency`` in flight at a time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:
        next_index = 0
        latencies: list[float] = []

        async def worker() -> None:
            nonlocal next_index
            while next_index < requests:
                index = next_index
                next_index += 1
                caption, elapsed_ms = await _caption(client, images[index % len(images)])
                captions[index % len(images)] = caption
                latencies.append(elapsed_ms)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, latencies


def _bench(model: str, args: argparse.Namespace, images: list[bytes],
           scratch: Path) -> tuple[list[LevelResult], dict[str, dict[int, str]]]:
    """Both servers run side by side and each concurrency level is measured on one right after
    the other, so a busy neighbour on a shared machine slows both modes alike."""
    modes = {"on": args.max_batch, "off": 1}
    servers = {mode: Server(model, max_batch, args, scratch / f"server-{mode}.log") for mode, max_batch in modes.items()}
    captions: dict[str, dict[int, str]] = {mode: {} for mode in modes}
    results = []
    try:
        for mode, server in servers.items():
            server.wait_ready()
            asyncio.run(_run_level(server.url, images, 4, 16, captions[mode]))  # warm-up: first calls are slow
        for concurrency in args.concurrency:
            requests = max(args.requests, 2 * concurrency)
            for mode, server in servers.items():
                seconds, latencies = asyncio.run(_run_level(server.url, images, concurrency, requests, captions[mode]))
                results.append(LevelResult(mode, concurrency, requests, seconds, latencies))
                print(f"  batching {mode:>3}  c={concurrency:<3} {requests / seconds:7.2f} req/s  "
                      f"p50 {statistics.median(latencies):8.0f} ms  p99 {np.percentile(latencies, 99):8.0f} ms",
                      flush=True)
        for mode, server in servers.items():
            stats = httpx.get(f"{server.url}/healthz").json()["batching"]["captions"]
            print(f"  batching {mode:>3}: {stats['items']} images in {stats['batches']} model calls "
                  f"(largest {stats['largest_batch']})", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return results, captions


@dataclass
class DrawingTally:
    answered: int = 0
    abandoned: int = 0  # hung up on by the client, as planned
    refused: int = 0  # any other status (busy, timeout)


async def _captions_until(client: httpx.AsyncClient, images: list[bytes], requests: int,
                          concurrency: int) -> list[float]:
    """Latencies of ``requests`` caption requests, ``concurrency`` in flight at a time."""
    latencies: list[float] = []
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < requests:
            index = next_index
            next_index += 1
            latencies.append((await _caption(client, images[index % len(images)]))[1])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def _draw_until(url: str, stop: asyncio.Event, client_index: int, n: int, hang_up_s: float | None,
                      tally: DrawingTally) -> None:
    """Loop on generations of ``n`` images until ``stop``; with ``hang_up_s``, hang up on each
    after that long (a client that gave up, as a browser tab closed mid-request does)."""
    timeout = httpx.Timeout(600.0 if hang_up_s is None else hang_up_s)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        request = 0
        while not stop.is_set():
            request += 1
            body = {"prompt": f"a red circle and a blue square, drawing {client_index}.{request}", "n": n}
            try:
                response = await client.post("/v1/images/generations", json=body)
            except httpx.TimeoutException:
                tally.abandoned += 1
                continue
            if response.status_code == 200:
                tally.answered += 1
            else:
                tally.refused += 1
                await asyncio.sleep(0.5)


async def _mixed_phase(server: Server, images: list[bytes], args: argparse.Namespace,
                       with_drawings: bool) -> tuple[list[float], DrawingTally]:
    tally = DrawingTally()
    stop = asyncio.Event()
    drawers = []
    if with_drawings:
        drawers = [asyncio.ensure_future(_draw_until(server.url, stop, i, args.n, args.hang_up_s if i % 2 else None,
                                                     tally)) for i in range(args.drawing_clients)]
        await asyncio.sleep(args.hang_up_s)  # let the drawings fill the server first
    limits = httpx.Limits(max_connections=args.caption_clients)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=600) as client:
        latencies = await _captions_until(client, images, args.requests, args.caption_clients)
    stop.set()
    await asyncio.gather(*drawers)
    return latencies, tally


def _bench_mixed(model: str, args: argparse.Namespace, images: list[bytes], scratch: Path) -> None:
    server = Server(model, args.max_batch, args, scratch / "server-mixed.log")
    try:
        server.wait_ready()
        asyncio.run(_run_level(server.url, images, 4, 16, {}))  # warm-up: first calls are slow
        baseline = server.memory_mib()["VmRSS"]
        alone, _ = asyncio.run(_mixed_phase(server, images, args, with_drawings=False))
        mixed, tally = asyncio.run(_mixed_phase(server, images, args, with_drawings=True))
        memory = server.memory_mib()
        skipped = httpx.get(f"{server.url}/healthz").json()["batching"].get("generations", {})
    finally:
        server.stop()
    print(f"\n| captions ({args.requests}, {args.caption_clients} clients) | p50 | p99 | max |")
    print("|---|---|---|---|")
    for name, latencies in (("alone", alone), (f"beside {args.drawing_clients} drawing clients (n={args.n}, every "
                                               f"other one hanging up after {args.hang_up_s:g} s)", mixed)):
        print(f"| {name} | {np.percentile(latencies, 50):.0f} ms | {np.percentile(latencies, 99):.0f} ms "
              f"| {max(latencies):.0f} ms |")
    print(f"\np99 with drawings / p99 alone: {np.percentile(mixed, 99) / np.percentile(alone, 99):.1f}x")
    print(f"drawing requests: {tally.answered} answered, {tally.abandoned} hung up on, {tally.refused} refused; "
          f"server generation stats: {skipped or 'none reported'}")
    print(f"server RSS: {baseline:.0f} MiB after warm-up, {memory['VmRSS']:.0f} MiB at the end, "
          f"peak {memory['VmHWM']:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a saved pipeline folder (default: the embedded model)")
    parser.add_argument("--workload", choices=["captions", "mixed"], default="captions")
    parser.add_argument("--server-checkout", type=Path, default=None,
                        help="run the server from this checkout's code (a before/after comparison)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=48, help="requests per level and mode (at least 2x concurrency)")
    parser.add_argument("--max-batch", type=int, default=16, help="max batch with batching on")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-caption-tokens", type=int, default=24,
                        help="caption length cap (about a Shapes caption; default %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="passed to unitok serve (default: torch's own, one per core)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--images", type=int, default=64, help="distinct test images")
    mixed = parser.add_argument_group("--workload mixed")
    mixed.add_argument("--caption-clients", type=int, default=2, help="clients sending captions, one at a time each")
    mixed.add_argument("--drawing-clients", type=int, default=4, help="clients looping on generations")
    mixed.add_argument("--n", type=int, default=4, help="images per generation request")
    mixed.add_argument("--hang-up-s", type=float, default=1.0, help="when the hanging-up drawing clients give up")
    args = parser.parse_args()
    if min(args.caption_clients, args.drawing_clients, args.n, args.requests) < 1 or args.hang_up_s <= 0:
        parser.error("--caption-clients, --drawing-clients, --n and --requests must be at least 1, --hang-up-s positive")

    with tempfile.TemporaryDirectory(prefix="bench_api_") as tmp:
        scratch = Path(tmp)
        model, which = _model_dir(args, scratch)
        print(which)
        threads = args.threads or "torch default"
        print(f"torch threads per server: {threads}; host: {os.cpu_count()} cores. Each request: 1 image "
              f"({args.image_size}x{args.image_size} PNG); max wait {args.max_wait_ms} ms.", flush=True)
        images = _test_images(args.images, args.image_size, seed=0)
        if args.workload == "mixed":
            print(f"server code: {args.server_checkout or 'this checkout'}", flush=True)
            _bench_mixed(model, args, images, scratch)
            return 0
        results, captions = _bench(model, args, images, scratch)

    print(f"\n| concurrency | batching on (max {args.max_batch}): req/s, p50, p99 | batching off: req/s, p50, p99 | speed-up |")
    print("|---|---|---|---|")
    on = [r for r in results if r.mode == "on"]
    off = [r for r in results if r.mode == "off"]
    for a, b in zip(on, off, strict=True):
        print(f"| {a.concurrency} | {a.rps:.1f}, {a.percentile(50):.0f} ms, {a.percentile(99):.0f} ms "
              f"| {b.rps:.1f}, {b.percentile(50):.0f} ms, {b.percentile(99):.0f} ms | {a.rps / b.rps:.2f}x |")
    common = captions["on"].keys() & captions["off"].keys()
    differing = sum(captions["on"][i] != captions["off"][i] for i in common)
    print(f"\ncaptions differing between batched and unbatched serving: {differing} of {len(common)} images")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
