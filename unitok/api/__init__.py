"""HTTP API for UniTok (``unitok serve``): FastAPI on uvicorn, with request micro-batching.

One job a module: ``errors``, ``images`` (decoding and limits), ``schemas``, ``batching``,
``backend`` (the model behind it), ``access_log``, ``body_limit``, ``app``, ``server``.
"""
