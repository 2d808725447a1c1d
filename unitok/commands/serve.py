"""``unitok serve``: the captioning and text-to-image HTTP API on uvicorn.

Imports of torch, the pipeline, FastAPI and uvicorn happen inside ``run`` so ``--help`` is instant.
The API key comes from the ``UNITOK_API_KEY`` environment variable, never from a flag (flags show
up in process lists).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

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
    parser.add_argument("--max-body-mb", type=float, default=20.0,
                        help="largest request body in MiB (default: %(default)s)")
    parser.add_argument("--max-images", type=int, default=16,
                        help="most images per caption request (default: %(default)s)")
    parser.add_argument("--max-image-pixels", type=int, default=4096 * 4096,
                        help="largest width*height of an uploaded image (default: %(default)s)")
    parser.add_argument("--max-caption-tokens", type=int, default=64,
                        help="longest caption, in tokens (default: %(default)s)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.epilog = f"Set {API_KEY_ENV} to require 'Authorization: Bearer <key>' on /v1/* endpoints."


def run(args: argparse.Namespace) -> int:
    model_dir = resolve_model_dir(args.model)  # fails fast, before the heavy imports below
    import torch

    from unitok.api.app import Batching, create_app
    from unitok.api.backend import load_backend
    from unitok.api.images import Limits
    from unitok.api.server import serve

    _configure_logging(args.log_level)
    try:
        limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_images=args.max_images,
                        max_image_pixels=args.max_image_pixels)
        batching = Batching(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue)
        if min(batching.max_batch, batching.max_queue, args.max_caption_tokens) < 1 or batching.max_wait_ms < 0:
            raise ValueError("--max-batch, --max-queue and --max-caption-tokens must be at least 1, "
                             "--max-wait-ms non-negative")
    except ValueError as error:
        raise UserError(str(error)) from None
    check_runtime_arguments(args)
    set_threads(args)  # also holds in the model's worker thread
    quiet_library_logging()
    backend = load_backend(model_dir, device=args.device, max_caption_tokens=args.max_caption_tokens)
    api_key = os.environ.get(API_KEY_ENV) or None
    logging.getLogger("unitok.api").info(
        "serving %s on http://%s:%d (docs at /docs, max batch %d, max wait %g ms, %d torch threads, API key %s)",
        backend.name, args.host, args.port, batching.max_batch, batching.max_wait_ms, torch.get_num_threads(),
        "required" if api_key else "not required")
    serve(create_app(backend, limits=limits, batching=batching, api_key=api_key), args.host, args.port)
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The access log is one bare JSON object per line, ready for a log shipper.
    access = logging.getLogger("unitok.api.access")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(handler)
    access.propagate = False
