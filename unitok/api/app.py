"""The FastAPI application: routes, auth, limits and the two micro-batchers.

Request bodies are read by the routes themselves (not declared as FastAPI body parameters) so
that the API key is checked before a single body byte is read, and so ``/v1/captions`` can take
either multipart files or JSON. The models in ``schemas`` still validate them and document them
in ``/docs``.
"""

from __future__ import annotations

import base64
import io
import secrets
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from unitok.api.access_log import AccessLogMiddleware
from unitok.api.backend import DrawJob, ModelBackend
from unitok.api.batching import ItemResult, MicroBatcher, QueueFull
from unitok.api.body_limit import BodyLimitMiddleware
from unitok.api.errors import ApiError, install_error_handlers
from unitok.api.images import Limits, decode_base64_image, open_image
from unitok.api.schemas import (
    MAX_SEED,
    CaptionResponse,
    GeneratedImage,
    ImageGenerationResponse,
    ModelCard,
    ModelList,
    caption_request_model,
    generation_request_model,
)
from unitok.errors import UserError


@dataclass(frozen=True)
class Batching:
    """``max_batch=1`` serves each item alone (batching off); over ``max_queue`` waiting items
    new requests get 503."""

    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 1024


# Module level so the dependency's annotation resolves (and /docs gets an "Authorize" button).
_bearer = HTTPBearer(auto_error=False, description="Needed when the server has UNITOK_API_KEY set.")


def create_app(backend: ModelBackend, *, limits: Limits | None = None, batching: Batching | None = None,
               api_key: str | None = None) -> FastAPI:
    """Build the app around a loaded model. ``api_key`` set -> ``/v1/*`` needs ``Bearer <key>``."""
    limits = limits or Limits()
    batching = batching or Batching()
    caption_request = caption_request_model(limits)
    generation_request = generation_request_model(limits, backend.default_guidance_scale)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One model thread: caption and drawing batches take turns on the same weights.
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unitok-model")
        settings = dict(max_batch=batching.max_batch, max_wait_ms=batching.max_wait_ms,
                        max_queue=batching.max_queue, executor=executor)
        app.state.captioner = MicroBatcher(backend.caption_batch, **settings)
        app.state.drawer = MicroBatcher(backend.draw_batch, **settings)
        app.state.captioner.start()
        app.state.drawer.start()
        try:
            yield
        finally:
            await app.state.captioner.stop()
            await app.state.drawer.stop()
            executor.shutdown(wait=True)

    app = FastAPI(
        title="UniTok API",
        summary="Image captioning and text-to-image with one discrete-token language model.",
        version="1",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limits.max_body_bytes)
    app.add_middleware(AccessLogMiddleware)  # added last = outermost: it also logs refused bodies

    def require_api_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
        if api_key is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                                "with the key the server was started with (UNITOK_API_KEY)",
                           headers={"WWW-Authenticate": "Bearer"})

    authorized = [Depends(require_api_key)]

    @app.get("/healthz", summary="Liveness, the model name and batching statistics")
    async def healthz(request: Request) -> dict:
        return {
            "status": "ok",
            "model": backend.name,
            "batching": {
                **asdict(batching),
                "captions": asdict(request.app.state.captioner.stats),
                "generations": asdict(request.app.state.drawer.stats),
            },
        }

    @app.get("/v1/models", dependencies=authorized, response_model=ModelList, summary="The served model")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=backend.name, capabilities=["captions", "images.generations"])])

    @app.post("/v1/captions", dependencies=authorized, response_model=CaptionResponse,
              summary="Describe images",
              openapi_extra=_caption_body_docs(caption_request, limits))
    async def captions(request: Request) -> CaptionResponse:
        started = time.perf_counter()
        payloads = await _read_caption_payloads(request, caption_request, limits)
        request.state.n_images = len(payloads)
        images = await run_in_threadpool(lambda: [open_image(data, name, limits) for name, data in payloads])
        decoded = time.perf_counter()
        results = await _submit(request.app.state.captioner, images)
        return CaptionResponse(
            captions=[r.value for r in results],
            model=backend.name,
            timings_ms=_timings(started, decode=(decoded - started) * 1000,
                                queue=max(r.queue_ms for r in results), model=max(r.model_ms for r in results)),
        )

    @app.post("/v1/images/generations", dependencies=authorized, response_model=ImageGenerationResponse,
              summary="Draw images for a prompt",
              openapi_extra=_json_body_docs(generation_request))
    async def generations(request: Request) -> ImageGenerationResponse:
        started = time.perf_counter()
        body = _validate(generation_request, await _read_json_body(request))
        try:
            backend.check_prompt(body.prompt)
        except UserError as error:
            raise ApiError(422, f"prompt: {error}") from None
        first_seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
        jobs = [DrawJob(body.prompt, body.guidance_scale, (first_seed + i) % (MAX_SEED + 1)) for i in range(body.n)]
        request.state.n_images = len(jobs)
        results = await _submit(request.app.state.drawer, jobs)
        drawn = time.perf_counter()
        pngs = await run_in_threadpool(lambda: [_png_base64(r.value.image) for r in results])
        return ImageGenerationResponse(
            created=int(time.time()),
            data=[GeneratedImage(b64_json=png, seed=job.seed, revised_prompt=result.value.drawn_prompt)
                  for png, job, result in zip(pngs, jobs, results, strict=True)],
            model=backend.name,
            timings_ms=_timings(started, queue=max(r.queue_ms for r in results),
                                model=max(r.model_ms for r in results),
                                encode=(time.perf_counter() - drawn) * 1000),
        )

    return app


async def _submit(batcher: MicroBatcher, items: list) -> list[ItemResult]:
    try:
        return await batcher.submit(items)
    except QueueFull as error:
        raise ApiError(503, f"server busy: {error}; retry shortly", "server_busy", headers={"Retry-After": "1"}) from None


async def _read_caption_payloads(request: Request, model: type[BaseModel],
                                 limits: Limits) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of each image in a multipart or JSON caption request."""
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        return await _read_multipart_images(request, limits)
    if media_type == "application/json":
        # Parsing and base64-decoding up to the body limit takes tens of ms: off the event loop.
        return await run_in_threadpool(_json_images, model, await request.body())
    raise ApiError(415, "send images as multipart/form-data files (field 'images') or as JSON "
                        '{"images": ["<base64>", ...]} with Content-Type application/json')


def _json_images(model: type[BaseModel], body: bytes) -> list[tuple[str, bytes]]:
    images = _validate(model, body).images
    return [(f"images.{i}", decode_base64_image(text, i)) for i, text in enumerate(images)]


async def _read_multipart_images(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    form = await request.form()
    try:
        files: list[tuple[str, bytes]] = []
        for field, value in form.multi_items():
            if not isinstance(value, UploadFile):
                if value.lstrip().lower().startswith(("http://", "https://", "ftp://")):
                    raise ApiError(422, f"form field {field!r}: URLs are not fetched; upload the image file "
                                        "itself", "url_not_supported")
                raise ApiError(422, f"form field {field!r} is not a file; send each image as a file part, "
                                    "e.g. curl -F images=@photo.png")
            if len(files) == limits.max_images:
                raise ApiError(422, f"too many images: at most {limits.max_images} per request")
            files.append((f"{field}.{len(files)} ({value.filename})", await value.read()))
    finally:
        await form.close()
    if not files:
        raise ApiError(422, "no images: send at least one file part, e.g. curl -F images=@photo.png")
    return files


async def _read_json_body(request: Request) -> bytes:
    if _media_type(request) != "application/json":
        raise ApiError(415, "send a JSON body with Content-Type application/json")
    return await request.body()


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _validate(model: type[BaseModel], body: bytes) -> BaseModel:
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        # Same 400/422 answer FastAPI gives for declared body parameters.
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]) from None


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _timings(started: float, **parts: float) -> dict[str, float]:
    timings = {name: round(ms, 2) for name, ms in parts.items()}
    timings["total"] = round((time.perf_counter() - started) * 1000, 2)
    return timings


def _json_body_docs(model: type[BaseModel]) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _caption_body_docs(model: type[BaseModel], limits: Limits) -> dict:
    docs = _json_body_docs(model)
    docs["requestBody"]["content"]["multipart/form-data"] = {"schema": {
        "type": "object",
        "properties": {"images": {"type": "array", "maxItems": limits.max_images,
                                  "items": {"type": "string", "format": "binary"}}},
        "required": ["images"],
    }}
    return docs
