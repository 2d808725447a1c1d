"""HTTP API for UniTok: captioning and text-to-image over FastAPI, with request micro-batching.

Modules, one job each: ``errors`` (uniform JSON errors), ``images`` (safe image decoding and the
request limits), ``schemas`` (request/response bodies), ``batching`` (the micro-batcher),
``backend`` (the model interface and its adapter over ``UniTokPipeline``), ``access_log``,
``app`` (``create_app``), ``server`` (uvicorn, foreground or in a background thread) and ``cli``
(``unitok serve``). This package file imports nothing so ``unitok serve --help`` stays fast.
"""
