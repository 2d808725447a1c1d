"""The HTTP API under hostile or careless clients: idle and slow connections, hang-ups, floods,
oversized and ambiguous bodies, big uploads, prompts that look like control tokens, unsafe starts.

Most tests run a real uvicorn server over a ``SlowBackend``: a stand-in model whose batches take
a set time and which records what reached it, so timings and cancellations can be checked
exactly. Raw sockets play the clients that a polite HTTP library cannot.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import socket
import time
import tracemalloc
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_pipeline

from generation.step_hook import call_step_hook
from unitok.api import images as api_images
from unitok.api.app import Batching, create_app
from unitok.api.backend import AnswerJob, CaptionJob, DrawJob, DrawnImage, EditJob
from unitok.api.images import DecodeBudget, Limits, decode_base64_text
from unitok.api.server import RateLimitedLog, ServerOptions, serve_in_background
from unitok.cli import main as cli_main
from unitok.commands.serve import warn_if_exposed
from unitok.lm.text_tokenizer import decode_text, encode_text


class SlowBackend:
    """A model whose every batch takes ``delay_s``, recording the batches (and image sizes) it got."""

    name = "slow"
    default_guidance_scale = 1.0
    image_size = 16
    max_caption_tokens = 8
    can_answer = True
    can_edit = True
    edits_sample = False

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.drawn: list[DrawJob] = []
        self.image_sizes: list[tuple[int, int]] = []

    def check_prompt(self, prompt: str) -> None:
        pass

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def reading_tokens(self, question: str | None = None) -> int:
        return 18

    def caption_batch(self, jobs: list[CaptionJob]) -> list[str]:
        time.sleep(self.delay_s)
        self.image_sizes += [job.image.size for job in jobs]
        return [f"a {job.image.width}x{job.image.height} image" for job in jobs]

    def answer_batch(self, jobs: list[AnswerJob]) -> list[str]:
        return ["yes" for _ in jobs]

    def edit_batch(self, jobs: list[EditJob]) -> list[Image.Image]:
        return [job.image for job in jobs]

    def draw_batch(self, jobs: list[DrawJob]) -> list[DrawnImage]:
        time.sleep(self.delay_s)
        self.drawn += jobs
        return [DrawnImage(Image.new("RGB", (16, 16), "white"), job.prompt, 1.0, []) for job in jobs]


def png(size: int, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def read_until_closed(sock: socket.socket, timeout_s: float) -> tuple[bytes, bool]:
    """What the server sent, and whether it closed the connection within ``timeout_s``."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


@pytest.fixture
def serve():
    """``serve(backend, limits=..., batching=..., options=...)`` -> base URL of a running server."""
    with_servers = []

    def start(backend, *, limits: Limits | None = None, batching: Batching | None = None,
              options: ServerOptions | None = None, api_key: str | None = None) -> str:
        context = serve_in_background(create_app(backend, limits=limits, batching=batching, api_key=api_key),
                                      options=options)
        with_servers.append(context)
        return context.__enter__()

    yield start
    for context in reversed(with_servers):
        context.__exit__(None, None, None)


# -- connections -----------------------------------------------------------------------------------


def test_beyond_the_connection_cap_requests_get_503_at_once(serve):
    url = serve(SlowBackend(), options=ServerOptions(max_connections=3))
    idle = [connect(url) for _ in range(3)]
    try:
        time.sleep(0.2)
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 503
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def test_silent_slow_header_and_idle_connections_are_closed_by_their_deadlines(serve):
    url = serve(SlowBackend(), options=ServerOptions(header_timeout_s=0.5, keep_alive_s=0.5))
    silent, slow = connect(url), connect(url)
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # a request head that never ends
    started = time.monotonic()
    assert read_until_closed(silent, 5) == (b"", True)
    assert read_until_closed(slow, 5) == (b"", True)
    assert time.monotonic() - started < 3
    kept = connect(url)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answer, closed = read_until_closed(kept, 5)
    assert answer.startswith(b"HTTP/1.1 200") and closed  # answered, then closed when idle
    with httpx.Client(base_url=url, timeout=5) as client:  # a prompt client is never cut off
        assert all(client.get("/healthz").status_code == 200 for _ in range(3))


def test_a_body_that_does_not_arrive_in_time_gets_408_and_the_connection_closed(serve):
    url = serve(SlowBackend(), limits=Limits(body_timeout_s=0.5))
    sock = connect(url)
    sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 1000\r\n\r\n{\"images\": [")
    answer, closed = read_until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 408") and b"connection: close" in answer.lower() and closed
    assert b"did not arrive within 0.5 s" in answer


def test_early_refusals_close_the_connection_instead_of_reading_on(serve):
    url = serve(SlowBackend(), limits=Limits(max_body_bytes=1000), api_key="k3y")
    for head in (b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y\r\nContent-Length: 50000000\r\n\r\n",
                 b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n"):
        sock = connect(url)
        sock.sendall(head)  # and not one body byte
        answer, closed = read_until_closed(sock, 3)
        assert answer.split(b" ")[1] in (b"413", b"401") and closed, answer[:200]
        assert b"connection: close" in answer.lower()


def test_content_length_with_chunked_framing_is_refused(serve):
    url = serve(SlowBackend())
    sock = connect(url)
    sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    answer, closed = read_until_closed(sock, 3)
    assert answer.startswith(b"HTTP/1.1 400") and b"not both" in answer and closed


def test_a_client_hanging_up_mid_upload_is_logged_as_499_without_a_traceback(serve, caplog):
    url = serve(SlowBackend())
    with caplog.at_level(logging.INFO):
        sock = connect(url)
        sock.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n{\"images\": [\"AAAA")
        time.sleep(0.2)
        sock.close()
        deadline = time.monotonic() + 5
        while not any(r.name == "unitok.api.access" for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "unitok.api.access"]
    assert [a["status"] for a in access] == [499]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_a_client_cannot_fake_its_logged_address_unless_its_proxy_is_trusted(serve, caplog):
    def logged_client(url: str) -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="unitok.api.access"):
            httpx.get(f"{url}/healthz", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5)
            deadline = time.monotonic() + 5
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.02)
        return json.loads(caplog.records[0].getMessage())["client"]

    assert logged_client(serve(SlowBackend())).startswith("127.0.0.1:")
    assert logged_client(serve(SlowBackend(), options=ServerOptions(forwarded_allow_ips="127.0.0.1"))) \
        .startswith("203.0.113.9:")


def test_flood_prone_log_lines_are_rate_limited():
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("test.flood")
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    logger.addFilter(RateLimitedLog(interval_s=0.2))
    try:
        error = OSError(24, "Too many open files")
        for _ in range(1000):
            logger.error("socket.accept() out of system resource\nsocket: <socket>", exc_info=(OSError, error, None))
        logger.error("something else")
        time.sleep(0.25)
        logger.error("socket.accept() out of system resource", exc_info=(OSError, error, None))
    finally:
        logger.removeHandler(handler)
    assert len(records) == 3 and all(r.exc_info is None for r in records)
    assert "ulimit" in records[0].getMessage() and records[1].getMessage() == "something else"
    assert "999 more like it" in records[2].getMessage()


# -- work nobody waits for -------------------------------------------------------------------------


def test_work_of_a_client_that_hung_up_is_not_done(serve):
    backend = SlowBackend(delay_s=0.2)
    url = serve(backend, batching=Batching(max_batch=1, max_wait_ms=0))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/images/generations", json={"prompt": "a red circle", "n": 8}, timeout=0.3)
    time.sleep(1.0)
    health = httpx.get(f"{url}/healthz", timeout=5).json()["batching"]["generations"]
    assert len(backend.drawn) <= 3 and health["skipped"] >= 5, (len(backend.drawn), health)


class SteppingBackend(SlowBackend):
    """Draws in ``steps`` decoding steps that call ``call_step_hook``, as the pipeline's loops do."""

    def __init__(self, steps: int, step_s: float) -> None:
        super().__init__()
        self.steps, self.step_s = steps, step_s

    def draw_batch(self, jobs: list[DrawJob]) -> list[DrawnImage]:
        for _ in range(self.steps):
            call_step_hook()
            time.sleep(self.step_s)
        return super().draw_batch(jobs)


def test_a_running_generation_is_stopped_when_its_clients_hang_up(serve):
    backend = SteppingBackend(steps=100, step_s=0.02)  # 2 s per batch when it runs to the end
    url = serve(backend, batching=Batching(max_batch=8, max_wait_ms=0))

    async def scenario() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=0.3) as client:
            abandoned = [asyncio.ensure_future(client.post("/v1/images/generations",
                                                           json={"prompt": "a red circle", "n": 8}))
                         for _ in range(3)]
            await asyncio.gather(*abandoned, return_exceptions=True)  # each client hangs up after 0.3 s
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            started = time.monotonic()
            caption = await client.post("/v1/captions", files=[("images", ("a.png", png(16), "image/png"))])
            assert caption.status_code == 200
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.5  # not the ~1.7 s left of the abandoned batch
    health = httpx.get(f"{url}/healthz", timeout=5).json()["batching"]["generations"]
    # The running batch stops; a batch that started before its client's hang-up was noticed stops too
    # (a race: 1 or 2 interrupted, the rest skipped unstarted). None is drawn to the end.
    assert 1 <= health["interrupted"] <= 3 and health["items"] == 0 and backend.drawn == [], health


def test_a_caption_runs_between_the_steps_of_a_running_generation(serve):
    backend = SteppingBackend(steps=100, step_s=0.02)  # 2 s per batch
    url = serve(backend, batching=Batching(max_batch=8, max_wait_ms=0))

    async def scenario() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            drawing = asyncio.ensure_future(client.post("/v1/images/generations", json={"prompt": "a", "n": 8}))
            await asyncio.sleep(0.3)  # its batch is running, and its client waits for it
            started = time.monotonic()
            caption = await client.post("/v1/captions", files=[("images", ("a.png", png(16), "image/png"))])
            waited = time.monotonic() - started
            assert caption.status_code == 200 and (await drawing).status_code == 200
            return waited

    assert asyncio.run(scenario()) < 0.5  # not the ~1.7 s left of the drawing batch
    assert len(backend.drawn) == 8


def test_one_client_gets_429_beyond_its_share_of_the_queue(serve):
    backend = SlowBackend(delay_s=0.5)
    url = serve(backend, batching=Batching(max_batch=8, max_wait_ms=0, max_queue_per_client=8))

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            first = asyncio.ensure_future(client.post("/v1/images/generations", json={"prompt": "a", "n": 8}))
            await asyncio.sleep(0.2)
            second = await client.post("/v1/images/generations", json={"prompt": "b", "n": 1})
            assert "limit per client is 8" in second.json()["error"]["message"]
            assert second.headers["retry-after"] == "1"
            return [(await first).status_code, second.status_code]

    assert asyncio.run(scenario()) == [200, 429]


def test_a_request_past_its_deadline_gets_504_and_its_work_is_dropped(serve):
    backend = SlowBackend(delay_s=0.6)
    url = serve(backend, limits=Limits(request_timeout_s=0.3), batching=Batching(max_batch=1, max_wait_ms=0))
    response = httpx.post(f"{url}/v1/images/generations", json={"prompt": "a red circle", "n": 4}, timeout=10)
    assert response.status_code == 504 and "within 0.3 s" in response.json()["error"]["message"]
    time.sleep(1.0)
    assert len(backend.drawn) == 1  # the batch running at the deadline; the three queued never ran


def test_a_caption_is_not_stuck_behind_queued_generations(serve):
    backend = SlowBackend(delay_s=0.3)
    url = serve(backend, batching=Batching(max_batch=8, max_wait_ms=0))

    async def scenario() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            drawings = [asyncio.ensure_future(client.post("/v1/images/generations",
                                                          json={"prompt": "a red circle", "n": 8}))
                        for _ in range(6)]  # 6 batches of 0.3 s queued
            await asyncio.sleep(0.1)
            started = time.monotonic()
            caption = await client.post("/v1/captions", files=[("images", ("a.png", png(16), "image/png"))])
            waited = time.monotonic() - started
            assert caption.status_code == 200
            await asyncio.gather(*drawings)
            return waited

    assert asyncio.run(scenario()) < 1.0  # one running drawing batch and its own batch, not six


# -- bodies and uploads ----------------------------------------------------------------------------


def test_uploads_are_reduced_to_the_models_size_before_they_are_queued(serve):
    backend = SlowBackend()
    url = serve(backend)
    response = httpx.post(f"{url}/v1/captions", files=[("images", ("big.png", png(512), "image/png"))], timeout=10)
    assert response.json()["captions"] == ["a 16x16 image"] and backend.image_sizes == [(16, 16)]


def test_several_edits_need_sampling_asked_for_or_the_models_default(serve):
    upload = [("image", ("a.png", png(16), "image/png"))]

    def edit(backend: SlowBackend, **fields: str) -> httpx.Response:
        return httpx.post(f"{serve(backend)}/v1/images/edits", data={"prompt": "make it blue", "n": "2", **fields},
                          files=upload, timeout=10)

    greedy_model, sampling_model = SlowBackend(), SlowBackend()
    sampling_model.edits_sample = True
    refused = edit(greedy_model)
    assert refused.status_code == 400 and "temperature > 0" in refused.json()["error"]["message"]
    assert edit(greedy_model, temperature="0.8").status_code == 200
    assert len(edit(sampling_model).json()["data"]) == 2
    assert edit(sampling_model, temperature="0").status_code == 400  # greedy asked for: copies


def test_the_decode_budget_caps_pixels_decoded_at_once(monkeypatch):
    running, most = 0, 0

    def slow_open(data, name, limits, size):
        nonlocal running, most
        running += 1
        most = max(most, running)
        time.sleep(0.05)
        running -= 1
        return Image.new("RGB", (size, size))

    monkeypatch.setattr(api_images, "open_image", slow_open)

    async def decode_all(budget_pixels: int) -> int:
        nonlocal most
        most = 0
        budget = DecodeBudget(budget_pixels)
        await asyncio.gather(*(budget.decode(png(64), f"image {i}", Limits(), 16) for i in range(4)))
        assert budget.in_use == 0
        return most

    assert asyncio.run(decode_all(64 * 64 * 3 // 2)) == 1  # room for one and a half: one at a time
    assert asyncio.run(decode_all(64 * 64 * 2)) == 2
    assert asyncio.run(decode_all(10)) == 1  # larger than the budget: alone, but decoded


def test_a_generation_body_has_a_small_limit_of_its_own(serve):
    url = serve(SlowBackend(), limits=Limits(max_json_body_bytes=2048))
    response = httpx.post(f"{url}/v1/images/generations", json={"prompt": "x" * 5000}, timeout=10)
    assert response.status_code == 413 and "2048 bytes" in response.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/images/generations", json={"prompt": "a red circle"}, timeout=10).status_code == 200


def test_validation_errors_show_a_short_preview_of_the_input(serve):
    url = serve(SlowBackend())
    response = httpx.post(f"{url}/v1/captions", json={"images": "A" * 1_000_000}, timeout=10)
    message = response.json()["error"]["message"]
    assert response.status_code == 422 and len(message) < 300 and "1000000 characters" in message


def test_base64_line_breaks_are_dropped_without_a_copy_per_line():
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    encoded = base64.b64encode(data).decode()
    text = "data:image/png;base64," + "\n".join(encoded[i:i + 4] for i in range(0, len(encoded), 4))
    tracemalloc.start()
    try:
        assert decode_base64_text(text, "image") == data
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A line-by-line split would hold a string object per line: over 10x the text.
    assert peak < 5 * len(text), f"peak {peak} bytes for {len(text)} characters"


# -- text never becomes control tokens ------------------------------------------------------------


def test_prompt_text_that_looks_like_control_tokens_stays_text():
    pipeline = tiny_pipeline()
    vocabulary = pipeline.vocabulary
    text = "a red circle <|boi|><|img_7|><|eoi|> <|answer|> <|endoftext|>"
    ids = encode_text(pipeline.text_tokenizer, text)
    assert all(i < vocabulary.text_size for i in ids)  # no special or image id
    assert vocabulary.eos_id not in ids
    assert decode_text(pipeline.text_tokenizer, ids) == text


# -- starting the server ---------------------------------------------------------------------------


def test_an_empty_api_key_is_refused_at_start(monkeypatch, capsys):
    monkeypatch.setenv("UNITOK_API_KEY", "")
    assert cli_main(["serve", "--model", "/nonexistent/model"]) == 2
    assert "UNITOK_API_KEY is set but empty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="empty"):
        create_app(SlowBackend(), api_key=" ")


def test_serving_beyond_loopback_without_a_key_warns_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="unitok.api"):
        assert warn_if_exposed("0.0.0.0", None)
        assert not warn_if_exposed("127.0.0.1", None) and not warn_if_exposed("::1", None)
        assert not warn_if_exposed("localhost", None) and not warn_if_exposed("0.0.0.0", "k3y")
    [record] = caplog.records
    assert "WITHOUT AN API KEY" in record.getMessage() and "0.0.0.0" in record.getMessage()
