"""``/v1/chat/completions`` for images: what an OpenAI vision request asks, and the answer's shapes.

A vision client sends ``messages`` whose last user message holds ``image_url`` parts (data URLs)
and maybe a ``text`` part. The model is single-turn: only that last user message is read (system
and earlier messages are context it was never trained on). Empty text or a "describe this"-style
request is captioning; anything else is a question about each image (``pipeline.answer``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from pydantic import BaseModel

from unitok.api.errors import ApiError
from unitok.api.schemas import ImagePart, TextPart

# What people type when they want a description rather than an answer.
_DESCRIBE = re.compile(
    r"(please |can you |could you )?(describe|caption|summari[sz]e|what('s| is) (in|shown in|on) (this|the) "
    r"(image|picture|photo)|what do you see|what does (this|the) (image|picture|photo) show)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class VisionRequest:
    images: list[str]  # data URLs or base64, in order
    text: str  # the text parts, joined

    @property
    def wants_caption(self) -> bool:
        return not self.text or _DESCRIBE.match(self.text) is not None


def vision_request(messages: list, max_images: int) -> VisionRequest:
    """The images and text of the last user message; refuses a request without an image."""
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise ApiError(400, "messages: no user message; send one with image_url parts (data URLs)",
                       param="messages")
    content = users[-1].content
    parts = [TextPart(type="text", text=content)] if isinstance(content, str) else list(content or [])
    images = [p.image_url.url for p in parts if isinstance(p, ImagePart)]
    text = " ".join(p.text.strip() for p in parts if isinstance(p, TextPart) and p.text.strip())
    if not images:
        raise ApiError(400, "the last user message has no image: add a content part "
                            '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}} '
                            "(this model reads images; it does not chat)", param="messages")
    if len(images) > max_images:
        raise ApiError(400, f"too many images: at most {max_images} per request", param="messages")
    return VisionRequest(images, text)


def reply_text(texts: list[str]) -> str:
    """One reply for several images: the text itself for one image, numbered lines for more."""
    if len(texts) == 1:
        return texts[0]
    return "\n".join(f"Image {i + 1}: {text}" for i, text in enumerate(texts))


def sse(payload: BaseModel | dict | str) -> bytes:
    """One server-sent event (``data: <json>``), as OpenAI streams its chunks."""
    if isinstance(payload, BaseModel):
        payload = payload.model_dump_json(exclude_none=True)
    elif isinstance(payload, dict):
        payload = json.dumps(payload, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def chunk(completion_id: str, created: int, model: str, delta: dict, finish_reason: str | None = None,
          usage: dict | None = None) -> dict:
    """A ``chat.completion.chunk`` (``usage`` only in the extra last chunk, with no choices)."""
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [] if usage is not None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
    if usage is not None:
        body["usage"] = usage
    return body
