"""Running the app on uvicorn: in the foreground (``unitok serve``) or in a background thread on a
free port (tests and embedding), always a real HTTP server on a real socket.

What uvicorn's options give against hostile clients is used as is: ``limit_concurrency`` (a 503
beyond that many connections or running requests) and ``timeout_keep_alive`` (an idle keep-alive
connection is closed). What uvicorn lacks is added here: a deadline for the request head (a
connection that never sends one, or sends it a byte at a time, otherwise stays open for ever) and
a rate limit on the log lines a flood produces. The body's deadline is ``BodyLimitMiddleware``'s.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ServerOptions:
    """Connection-level limits. ``max_connections``: beyond it uvicorn answers 503 at once;
    ``header_timeout_s``: a connection must send a whole request head this soon after it opens
    (or after its last answer), else it is closed; ``keep_alive_s``: idle time allowed between
    requests; ``forwarded_allow_ips``: proxies whose ``X-Forwarded-For`` is believed (None: no
    one's, so a client cannot fake the address the access log records; uvicorn's own default
    believes any local client)."""

    max_connections: int = 512
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    forwarded_allow_ips: str | None = None

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.header_timeout_s <= 0 or self.keep_alive_s <= 0:
            raise ValueError(f"max_connections must be >= 1 and the timeouts positive, got {self}")


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for the request head (slowloris, idle sockets)."""

    def __init__(self, *args, header_timeout_s: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_deadline_passed, self.cycle)

    def _head_deadline_passed(self, cycle_when_armed: object) -> None:
        # A new request head makes a new cycle; none since, and nothing running: still waiting for one.
        idle = self.cycle is None or self.cycle.response_complete
        if self.cycle is cycle_when_armed and idle and not self.transport.is_closing():
            self.transport.close()


class RateLimitedLog(logging.Filter):
    """Lets one record of each flood-prone kind through per ``interval_s`` (without its traceback)
    and says how many were dropped: an fd-exhausted accept loop or a connection flood otherwise
    writes thousands of lines a second."""

    FLOODS = ("socket.accept() out of system resource", "Exceeded concurrency limit")

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        kind = next((flood for flood in self.FLOODS if message.startswith(flood)), None)
        if kind is None:
            return True
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            self._dropped[kind] = self._dropped.get(kind, 0) + 1
            return False
        dropped = self._dropped.pop(kind, 0)
        self._last[kind] = now
        hint = " (out of file descriptors: raise `ulimit -n` or lower --max-connections)" if "accept" in kind else ""
        record.msg, record.args, record.exc_info, record.exc_text = (
            f"{kind}{hint}; {dropped} more like it in the last {self.interval_s:g} s were not logged", None, None, None)
        return True


_FLOOD_FILTER = RateLimitedLog()


def install_log_rate_limits() -> None:
    """Rate-limit the flood-prone records of asyncio's accept loop and uvicorn (idempotent)."""
    for name in ("asyncio", "uvicorn.error"):
        logger = logging.getLogger(name)
        if _FLOOD_FILTER not in logger.filters:
            logger.addFilter(_FLOOD_FILTER)


def _config(app: FastAPI, host: str, port: int, options: ServerOptions) -> uvicorn.Config:
    # access_log=False: our AccessLogMiddleware writes a structured line per request instead.
    # log_config=None: leave logging as the caller configured it.
    install_log_rate_limits()
    proxies = options.forwarded_allow_ips
    extra = {"proxy_headers": False} if proxies is None else {"proxy_headers": True, "forwarded_allow_ips": proxies}
    return uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None,
                          timeout_graceful_shutdown=10, limit_concurrency=options.max_connections,
                          timeout_keep_alive=options.keep_alive_s,
                          http=functools.partial(HeaderDeadlineH11Protocol, header_timeout_s=options.header_timeout_s),
                          **extra)


def serve(app: FastAPI, host: str, port: int, options: ServerOptions | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM shut down gracefully)."""
    uvicorn.Server(_config(app, host, port, options or ServerOptions())).run()


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", startup_timeout_s: float = 60.0,
                        options: ServerOptions | None = None) -> Iterator[str]:
    """Serve ``app`` on a free port in a thread; yields its base URL, stops the server on exit."""
    # Binding the socket here (port 0) hands uvicorn a port nobody else can take meanwhile.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, host, port, options or ServerOptions()))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API server did not start; see the log above")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
