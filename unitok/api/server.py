"""Running the app on uvicorn: in the foreground (``unitok serve``) or in a background thread on a
free port (tests and embedding), always a real HTTP server on a real socket.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


def _config(app: FastAPI, host: str, port: int) -> uvicorn.Config:
    # access_log=False: our AccessLogMiddleware writes a structured line per request instead.
    # log_config=None: leave logging as the caller configured it.
    return uvicorn.Config(app, host=host, port=port, access_log=False, log_config=None,
                          timeout_graceful_shutdown=10)


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM shut down gracefully)."""
    uvicorn.Server(_config(app, host, port)).run()


@contextmanager
def serve_in_background(app: FastAPI, host: str = "127.0.0.1", startup_timeout_s: float = 60.0) -> Iterator[str]:
    """Serve ``app`` on a free port in a thread; yields its base URL, stops the server on exit."""
    # Binding the socket here (port 0) hands uvicorn a port nobody else can take meanwhile.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, host, port))
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
