"""``unitok serve``: the captioning and text-to-image HTTP API on uvicorn.

Imports of torch, the pipeline, FastAPI and uvicorn happen inside ``run`` so ``--help`` is instant.
The API key comes from the ``UNITOK_API_KEY`` environment variable, never from a flag (flags show
up in process lists).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping

from unitok.commands._options import (
    add_model_arguments,
    check_runtime_arguments,
    quiet_library_logging,
    set_threads,
)
from unitok.default_model import resolve_model_dir
from unitok.errors import UserError

API_KEY_ENV = "UNITOK_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    add_model_arguments(parser)
    # The flag's name before `--threads` became the one name for it in every command.
    parser.add_argument("--torch-threads", type=int, dest="threads", help=argparse.SUPPRESS)
    parser.add_argument("--max-batch", type=int, default=16,
                        help="most items (images) per model call; 1 turns micro-batching off (default: %(default)s)")
    parser.add_argument("--max-wait-ms", type=float, default=10.0,
                        help="how long a batch waits for more requests once it has one (default: %(default)s)")
    parser.add_argument("--max-queue", type=int, default=1024,
                        help="most items waiting for the model; beyond it requests get 503 (default: %(default)s)")
    parser.add_argument("--max-queue-per-client", type=int, default=256,
                        help="most items one client address may have queued or running; beyond it its requests get 429 "
                             "(default: %(default)s)")
    parser.add_argument("--max-body-mb", type=float, default=20.0,
                        help="largest request body in MiB (default: %(default)s)")
    parser.add_argument("--max-images", type=int, default=16,
                        help="most images per caption request (default: %(default)s)")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="largest width*height of an uploaded image (default: %(default)s)")
    parser.add_argument("--max-caption-tokens", type=int, default=64,
                        help="longest caption, in tokens (default: %(default)s)")
    parser.add_argument("--max-connections", type=int, default=512,
                        help="open connections (and running requests) beyond which new requests get 503 "
                             "(default: %(default)s); keep it under `ulimit -n`")
    parser.add_argument("--header-timeout-s", type=float, default=10.0,
                        help="a connection must send a whole request head this soon, else it is closed (default: %(default)s)")
    parser.add_argument("--body-timeout-s", type=float, default=30.0,
                        help="a request body must arrive this soon after its head, else 408 (default: %(default)s)")
    parser.add_argument("--keep-alive-s", type=float, default=5.0,
                        help="idle time allowed between requests on one connection (default: %(default)s)")
    parser.add_argument("--request-timeout-s", type=float, default=300.0,
                        help="longest wait for the model, queue included, before a 504 (default: %(default)s)")
    parser.add_argument("--forwarded-allow-ips", default=None,
                        help="proxies whose X-Forwarded-For is believed, comma-separated, e.g. 127.0.0.1 behind "
                             "a local nginx (default: none: the access log shows the peer's own address)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.epilog = f"Set {API_KEY_ENV} to require 'Authorization: Bearer <key>' on /v1/* endpoints."


def run(args: argparse.Namespace) -> int:
    api_key = read_api_key(os.environ)  # fails fast, like the model folder, before the heavy imports
    model_dir = resolve_model_dir(args.model)
    import torch

    from unitok.api.app import Batching, create_app
    from unitok.api.backend import load_backend
    from unitok.api.images import Limits
    from unitok.api.server import ServerOptions, serve

    _configure_logging(args.log_level)
    warn_if_exposed(args.host, api_key)
    try:
        limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_images=args.max_images,
                        max_image_pixels=args.max_image_pixels, request_timeout_s=args.request_timeout_s,
                        body_timeout_s=args.body_timeout_s)
        options = ServerOptions(max_connections=args.max_connections, header_timeout_s=args.header_timeout_s,
                                keep_alive_s=args.keep_alive_s, forwarded_allow_ips=args.forwarded_allow_ips)
        batching = Batching(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                            max_queue_per_client=args.max_queue_per_client)
        if (min(batching.max_batch, batching.max_queue, batching.max_queue_per_client, args.max_caption_tokens) < 1
                or batching.max_wait_ms < 0):
            raise ValueError("--max-batch, --max-queue, --max-queue-per-client and --max-caption-tokens must be "
                             "at least 1, --max-wait-ms non-negative")
    except ValueError as error:
        raise UserError(str(error)) from None
    check_runtime_arguments(args)
    set_threads(args)  # also holds in the model's worker thread
    quiet_library_logging()
    backend = load_backend(model_dir, device=args.device, dtype=args.dtype, max_caption_tokens=args.max_caption_tokens)
    logging.getLogger("unitok.api").info(
        "serving %s on http://%s:%d (docs at /docs, max batch %d, max wait %g ms, %d torch threads, API key %s)",
        backend.name, args.host, args.port, batching.max_batch, batching.max_wait_ms, torch.get_num_threads(),
        "required" if api_key else "not required")
    serve(create_app(backend, limits=limits, batching=batching, api_key=api_key), args.host, args.port, options)
    return 0


def read_api_key(environ: Mapping[str, str]) -> str | None:
    """The key from ``UNITOK_API_KEY``; None when unset. Set but empty (a typo in a deployment
    file, ``UNITOK_API_KEY=$UNDEFINED``) is refused: it would silently serve without a key."""
    key = environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise UserError(f"{API_KEY_ENV} is set but empty; set it to a real key, or unset it to serve without one")
    return key


def warn_if_exposed(host: str, api_key: str | None) -> bool:
    """Warn loudly (and return True) when serving beyond this machine without a key."""
    if api_key is not None or _is_loopback(host):
        return False
    logging.getLogger("unitok.api").warning(
        "\n%s\nSERVING ON %s WITHOUT AN API KEY: anyone who can reach this address can use the model.\n"
        "Set %s=<key> to require 'Authorization: Bearer <key>', or serve on 127.0.0.1.\n%s",
        "!" * 78, host, API_KEY_ENV, "!" * 78)
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The access log is one bare JSON object per line, ready for a log shipper.
    access = logging.getLogger("unitok.api.access")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
