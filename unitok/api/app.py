"""The FastAPI application: routes, auth, limits and the micro-batchers.

Request bodies are read by the routes themselves (not declared as FastAPI body parameters) so
that the API key is checked before a single body byte is read, and so ``/v1/captions`` can take
either multipart files or JSON. The models in ``schemas`` still validate them and document them
in ``/docs``. The OpenAI-compatible routes (``/v1/images/generations``, ``/v1/images/edits``,
``/v1/chat/completions``) take what the official ``openai`` client sends; ``docs/api.md`` lists
what is accepted, ignored and refused.

Every request's model work goes through a micro-batcher, one per task (captions, answers, edits,
drawings), all feeding one model thread. Each batcher hands the thread one batch at a time, so
the tasks take turns, and captions and answers also run between two decoding steps of a running
drawing or edit batch: a caption waits for one step, never for a queue of drawings. Within a
task, clients take turns too. A request's queued items are dropped when its
client hangs up or its deadline passes, and a batch all of whose clients left stops at its next
decoding step.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from unitok.api.access_log import AccessLogMiddleware
from unitok.api.backend import AnswerJob, CaptionJob, DrawJob, EditJob, ModelBackend
from unitok.api.batching import ItemResult, MicroBatcher, OwnerShareFull, QueueFull
from unitok.api.body_limit import BodyLimitMiddleware
from unitok.api.chat import VisionRequest, chunk, reply_text, sse, vision_request
from unitok.api.errors import CLOSE, ApiError, install_error_handlers
from unitok.api.images import DecodeBudget, Limits, decode_base64_image, decode_base64_text
from unitok.api.model_worker import ModelWorker
from unitok.api.request_id import RequestIdMiddleware
from unitok.api.schemas import (
    MAX_SEED,
    AssistantMessage,
    CaptionResponse,
    ChatChoice,
    ChatCompletion,
    GeneratedImage,
    ImageGenerationResponse,
    ModelCard,
    ModelList,
    Usage,
    caption_request_model,
    chat_request_model,
    generation_request_model,
)
from unitok.errors import UserError

# Generated images are upscaled by an integer factor with this filter: every model pixel becomes
# a crisp block, and nothing is invented that the model did not draw.
UPSCALE_FILTER = Image.Resampling.NEAREST


@dataclass(frozen=True)
class Batching:
    """``max_batch=1`` serves each item alone (batching off); over ``max_queue`` waiting items
    new requests get 503, and a client with ``max_queue_per_client`` items queued or running gets 429."""

    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 1024
    max_queue_per_client: int = 256  # a quarter of the queue: no one client can fill it


# Module level so the dependency's annotation resolves (and /docs gets an "Authorize" button).
_bearer = HTTPBearer(auto_error=False, description="Needed when the server has UNITOK_API_KEY set.")


def create_app(backend: ModelBackend, *, limits: Limits | None = None, batching: Batching | None = None,
               api_key: str | None = None) -> FastAPI:
    """Build the app around a loaded model. ``api_key`` set -> ``/v1/*`` needs ``Bearer <key>``."""
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key is empty: pass None to serve without a key, or a real key")
    limits = limits or Limits()
    batching = batching or Batching()
    caption_request = caption_request_model(limits)
    generation_request = generation_request_model(limits, backend.default_guidance_scale)
    chat_request = chat_request_model(limits)
    edit_form = _edit_form_model(limits)
    sizes = [backend.image_size * k for k in range(1, limits.max_upscale + 1)]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One model thread: the batchers' batches take turns on the same weights, and captions and
        # answers (a few greedy tokens) may also run between two steps of a drawing or an edit.
        worker = ModelWorker()
        settings = dict(max_batch=batching.max_batch, max_wait_ms=batching.max_wait_ms,
                        max_queue=batching.max_queue, max_queue_per_owner=batching.max_queue_per_client,
                        worker=worker)
        batchers = {"captions": MicroBatcher(backend.caption_batch, urgent=True, **settings),
                    "answers": MicroBatcher(backend.answer_batch, urgent=True, **settings),
                    "edits": MicroBatcher(backend.edit_batch, **settings),
                    "generations": MicroBatcher(backend.draw_batch, **settings)}
        app.state.batchers = batchers
        app.state.decoding = DecodeBudget(limits.max_decoding_pixels)
        for batcher in batchers.values():
            batcher.start()
        try:
            yield
        finally:
            for batcher in batchers.values():
                await batcher.stop()
            worker.shutdown()

    app = FastAPI(
        title="UniTok API",
        summary="Image captioning, questions, editing and text-to-image with one discrete-token language model.",
        version="1",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limits.max_body_bytes,
                       path_limits={"/v1/images/generations": limits.max_json_body_bytes},
                       body_timeout_s=limits.body_timeout_s)
    app.add_middleware(AccessLogMiddleware)  # outside the limits: it also logs refused bodies
    app.add_middleware(RequestIdMiddleware)  # added last = outermost: every answer carries the id

    def require_api_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
        if api_key is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                                "with the key the server was started with (UNITOK_API_KEY)",
                           headers={"WWW-Authenticate": "Bearer", **CLOSE}, code="invalid_api_key")

    authorized = [Depends(require_api_key)]

    def check_model(requested: str | None) -> None:
        if requested is not None and requested != backend.name:
            raise ApiError(404, f"model {requested!r} is not served here; this server serves {backend.name!r} "
                                "(GET /v1/models)", param="model", code="model_not_found")

    def output_side(size: str | None) -> int:
        if size is None or size == "auto":
            return backend.image_size
        match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", size)
        if match is None or match[1] != match[2] or int(match[1]) not in sizes:
            raise ApiError(400, f"size {size[:20]!r} is not available: this model draws {sizes[0]}x{sizes[0]}; "
                                f"send one of {', '.join(f'{s}x{s}' for s in sizes)} (larger ones are upscaled, "
                                "nearest neighbour) or 'auto'", param="size", code="invalid_size")
        return int(match[1])

    def check_response_format(response_format: str) -> None:
        if response_format != "b64_json":
            raise ApiError(400, f"response_format {response_format!r} is not supported: this server keeps no "
                                "files to link to; send response_format='b64_json' (the default)",
                           param="response_format", code="unsupported_response_format")

    def check_text(text: str, field: str) -> None:
        try:
            backend.check_prompt(text)
        except UserError as error:
            raise ApiError(422, f"{field}: {error}", param=field) from None

    async def run(request: Request, task: str, items: list, *, watch_disconnect: bool = True) -> list[ItemResult]:
        return await _run(request, request.app.state.batchers[task], items, limits.request_timeout_s,
                          watch_disconnect)

    async def decode(request: Request, data: bytes, name: str) -> Image.Image:
        return await request.app.state.decoding.decode(data, name, limits, backend.image_size)

    @app.get("/healthz", summary="Liveness, the model name and batching statistics")
    async def healthz(request: Request) -> dict:
        return {
            "status": "ok",
            "model": backend.name,
            "batching": {**asdict(batching),
                         **{task: asdict(b.stats) for task, b in request.app.state.batchers.items()}},
        }

    app.head("/healthz", include_in_schema=False)(healthz)  # load balancers probe with HEAD too

    @app.get("/v1/models", dependencies=authorized, response_model=ModelList, summary="The served model")
    async def models() -> ModelList:
        capabilities = ["captions", "images.generations", "chat.completions"]
        capabilities += ["images.edits"] if backend.can_edit else []
        capabilities += ["answers"] if backend.can_answer else []
        return ModelList(data=[ModelCard(id=backend.name, capabilities=capabilities)])

    @app.post("/v1/captions", dependencies=authorized, response_model=CaptionResponse,
              summary="Describe images",
              openapi_extra=_caption_body_docs(caption_request, limits))
    async def captions(request: Request) -> CaptionResponse:
        started = time.perf_counter()
        payloads = await _read_caption_payloads(request, caption_request, limits)
        request.state.n_images = len(payloads)
        images = [await decode(request, data, name) for name, data in payloads]
        decoded = time.perf_counter()
        results = await run(request, "captions", [CaptionJob(image, backend.max_caption_tokens) for image in images])
        return CaptionResponse(
            captions=[r.value for r in results],
            model=backend.name,
            timings_ms=_timings(started, decode=(decoded - started) * 1000,
                                queue=max(r.queue_ms for r in results), model=max(r.model_ms for r in results)),
        )

    @app.post("/v1/images/generations", dependencies=authorized, response_model=ImageGenerationResponse,
              summary="Draw images for a prompt (OpenAI-compatible)",
              openapi_extra=_json_body_docs(generation_request))
    async def generations(request: Request) -> ImageGenerationResponse:
        started = time.perf_counter()
        body = _validate(generation_request, await _read_json_body(request))
        check_model(body.model)
        check_response_format(body.response_format)
        side = output_side(body.size)
        check_text(body.prompt, "prompt")
        first_seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
        jobs = [DrawJob(body.prompt, body.guidance_scale, (first_seed + i) % (MAX_SEED + 1)) for i in range(body.n)]
        request.state.n_images = len(jobs)
        results = await run(request, "generations", jobs)
        drawn = time.perf_counter()
        pngs = await run_in_threadpool(lambda: [_png_base64(r.value.image, side) for r in results])
        return ImageGenerationResponse(
            created=int(time.time()),
            data=[GeneratedImage(b64_json=png, seed=job.seed, revised_prompt=result.value.drawn_prompt,
                                 consistency=round(result.value.consistency, 4), warnings=result.value.warnings)
                  for png, job, result in zip(pngs, jobs, results, strict=True)],
            model=backend.name,
            timings_ms=_timings(started, queue=max(r.queue_ms for r in results),
                                model=max(r.model_ms for r in results),
                                encode=(time.perf_counter() - drawn) * 1000),
        )

    @app.post("/v1/images/edits", dependencies=authorized, response_model=ImageGenerationResponse,
              summary="Edit an image as a prompt says (OpenAI-compatible, multipart)")
    async def edits(request: Request) -> ImageGenerationResponse:
        started = time.perf_counter()
        if not backend.can_edit:
            raise ApiError(400, f"model {backend.name!r} cannot edit images (its vocabulary has no <|edit|> token); "
                                "serve a model trained with the editing task", code="unsupported_task")
        (name, data), fields = await _read_edit_form(request)
        try:
            body = edit_form.model_validate(fields)
        except ValidationError as error:
            raise RequestValidationError(error.errors(include_url=False)) from None
        check_model(body.model)
        check_response_format(body.response_format)
        side = output_side(body.size)
        check_text(body.prompt, "prompt")
        if body.n > 1 and (body.temperature == 0 or (body.temperature is None and not backend.edits_sample)):
            raise ApiError(400, f"n={body.n} greedy edits would be {body.n} copies of one image; send n=1, or "
                                "temperature > 0 (an extension field) to sample different edits", param="n")
        image = await decode(request, data, name)
        first_seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
        jobs = [EditJob(image, body.prompt, body.temperature, (first_seed + i) % (MAX_SEED + 1)) for i in range(body.n)]
        request.state.n_images = len(jobs)
        results = await run(request, "edits", jobs)
        edited = time.perf_counter()
        pngs = await run_in_threadpool(lambda: [_png_base64(r.value, side) for r in results])
        return ImageGenerationResponse(
            created=int(time.time()),
            data=[GeneratedImage(b64_json=png, seed=job.seed, revised_prompt=body.prompt)
                  for png, job in zip(pngs, jobs, strict=True)],
            model=backend.name,
            timings_ms=_timings(started, queue=max(r.queue_ms for r in results),
                                model=max(r.model_ms for r in results),
                                encode=(time.perf_counter() - edited) * 1000),
        )

    @app.post("/v1/chat/completions", dependencies=authorized, response_model=ChatCompletion,
              summary="Caption images or answer a question about them (OpenAI vision messages)",
              openapi_extra=_json_body_docs(chat_request))
    async def chat_completions(request: Request):
        raw = await _read_json_body(request)
        body = await run_in_threadpool(_validate, chat_request, raw)  # up to the body limit: off the loop
        check_model(body.model)
        asked = vision_request(body.messages, limits.max_images)
        if not asked.wants_caption:
            if not backend.can_answer:
                raise ApiError(400, f"model {backend.name!r} cannot answer questions (its vocabulary has no "
                                    "<|answer|> token); send the image with no text, or with 'describe', for a "
                                    "caption", param="messages", code="unsupported_task")
            check_text(asked.text, "messages")
        request.state.n_images = len(asked.images)
        images = [await decode(request, await run_in_threadpool(decode_base64_text, url, f"image {i + 1}"),
                               f"image {i + 1}") for i, url in enumerate(asked.images)]
        max_tokens = min(body.max_completion_tokens or body.max_tokens or backend.max_caption_tokens,
                         backend.max_caption_tokens)
        jobs, task = _reading_jobs(asked, images, body, max_tokens)
        completion_id = f"chatcmpl-{request.state.request_id}"
        created = int(time.time())

        async def answer(watch_disconnect: bool) -> tuple[str, str, Usage]:
            results = await run(request, task, jobs, watch_disconnect=watch_disconnect)
            texts = [r.value for r in results]
            written = [backend.count_tokens(text) for text in texts]
            prompt_tokens = sum(backend.reading_tokens(None if task == "captions" else asked.text) for _ in images)
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=sum(written),
                          total_tokens=prompt_tokens + sum(written))
            cut = task == "captions" and any(count >= max_tokens for count in written)
            return reply_text(texts), "length" if cut else "stop", usage

        if not body.stream:
            text, finish, usage = await answer(watch_disconnect=True)
            return ChatCompletion(id=completion_id, created=created, model=backend.name, usage=usage,
                                  choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=finish)])

        include_usage = body.stream_options is not None and body.stream_options.include_usage

        async def events() -> AsyncIterator[bytes]:
            # Starlette cancels this generator when the client hangs up, which drops the queued work.
            yield sse(chunk(completion_id, created, backend.name, {"role": "assistant", "content": ""}))
            try:
                text, finish, usage = await answer(watch_disconnect=False)
            except ApiError as error:
                yield sse({"error": {"message": error.message, "type": error.type, "param": error.param,
                                     "code": error.code, "status": error.status}})
                return
            # The model writes a reading in one batched call, so the text arrives in one piece.
            yield sse(chunk(completion_id, created, backend.name, {"content": text}))
            yield sse(chunk(completion_id, created, backend.name, {}, finish_reason=finish))
            if include_usage:
                yield sse(chunk(completion_id, created, backend.name, {}, usage=usage.model_dump()))
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app


def _reading_jobs(asked: VisionRequest, images: list[Image.Image], body, max_tokens: int) -> tuple[list, str]:
    """Caption or answer jobs for a chat request's images, and which batcher takes them."""
    if not asked.wants_caption:
        return [AnswerJob(image, asked.text) for image in images], "answers"
    temperature = body.temperature or 0.0
    first_seed = body.seed if body.seed is not None else secrets.randbelow(MAX_SEED + 1)
    return [CaptionJob(image, max_tokens, temperature, body.top_p if temperature > 0 else None,
                       (first_seed + i) % (MAX_SEED + 1)) for i, image in enumerate(images)], "captions"


def _edit_form_model(limits: Limits) -> type[BaseModel]:
    class ImageEditForm(BaseModel):
        # Form fields arrive as text: lax parsing turns "2" into 2; unknown fields are refused.
        model_config = ConfigDict(extra="forbid")

        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars)
        n: int = Field(1, ge=1, le=limits.max_n)
        size: str | None = Field(None, max_length=20)
        response_format: str = Field("b64_json", max_length=20)
        model: str | None = Field(None, max_length=200)
        user: str | None = Field(None, max_length=256)
        quality: str | None = Field(None, max_length=32)
        temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False)  # None: the model's
        seed: int | None = Field(None, ge=0, le=MAX_SEED)

    return ImageEditForm


async def _run(request: Request, batcher: MicroBatcher, items: list, timeout_s: float,
               watch_disconnect: bool) -> list[ItemResult]:
    """The batcher's results, unless the client hangs up first (its queued items are dropped and
    the access log says 499) or ``timeout_s`` passes (504)."""
    owner = request.client.host if request.client else None  # after --forwarded-allow-ips rewrote it
    work = asyncio.ensure_future(_submit(batcher, items, owner))
    waiting = {work}
    if watch_disconnect:
        waiting.add(asyncio.ensure_future(_disconnected(request)))
    try:
        done, _ = await asyncio.wait(waiting, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiting:
            task.cancel()  # a cancelled submit frees its queued items (MicroBatcher.submit)
    if work in done:
        return work.result()
    if done:
        raise ClientDisconnect()
    raise ApiError(504, f"the model did not answer within {timeout_s:g} s (the server is overloaded); "
                        "retry later or ask for fewer images", "timeout", headers={"Retry-After": "5"})


async def _disconnected(request: Request) -> None:
    """Return when the client hangs up (the body has been read, so only ``http.disconnect`` is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _submit(batcher: MicroBatcher, items: list, owner: str | None) -> list[ItemResult]:
    try:
        return await batcher.submit(items, owner)
    except OwnerShareFull as error:
        raise ApiError(429, f"too many requests: {error}; wait for your earlier requests", "too_many_requests",
                       headers={"Retry-After": "1"}) from None
    except QueueFull as error:
        raise ApiError(503, f"server busy: {error}; retry shortly", "server_busy", headers={"Retry-After": "1"}) from None


async def _read_edit_form(request: Request) -> tuple[tuple[str, bytes], dict[str, str]]:
    """The one image file (field ``image``, or ``image[]`` as the openai client names a list) and
    the text fields of a multipart edit request."""
    if _media_type(request) != "multipart/form-data":
        raise ApiError(415, "send the edit as multipart/form-data: a file field 'image' and a text field 'prompt'")
    form = await request.form(max_files=4, max_fields=32)
    try:
        files: list[tuple[str, bytes]] = []
        fields: dict[str, str] = {}
        for field, value in form.multi_items():
            if isinstance(value, UploadFile):
                if field not in ("image", "image[]"):
                    raise ApiError(400, f"file field {field!r} is not supported (masks are not): send one file "
                                        "as 'image'", param=field)
                files.append((f"image ({value.filename})", await value.read()))
            else:
                fields[field] = value
    finally:
        await form.close()
    if len(files) != 1:
        raise ApiError(400, f"send exactly one image file (field 'image'); got {len(files)}", param="image")
    return files[0], fields


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


def _png_base64(image: Image.Image, side: int | None = None) -> str:
    if side is not None and image.size != (side, side):
        image = image.resize((side, side), UPSCALE_FILTER)
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
