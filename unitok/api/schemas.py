"""Request and response bodies. Request models are strict (no "3" for 3, no unknown fields) so a
wrong JSON type is a 422 that names the field rather than a silent coercion.

Request models are built per server from its ``Limits`` so the OpenAPI docs at ``/docs`` show
the limits that server enforces.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from unitok.api.images import Limits

MAX_SEED = 2**63 - 1


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def caption_request_model(limits: Limits) -> type[BaseModel]:
    class CaptionRequest(_Strict):
        images: list[str] = Field(
            min_length=1, max_length=limits.max_images,
            description="Images as base64 (or data:image/...;base64, URLs). Remote URLs are refused.",
        )

    return CaptionRequest


def generation_request_model(limits: Limits, default_guidance_scale: float) -> type[BaseModel]:
    class ImageGenerationRequest(_Strict):
        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars,
                            description="What to draw.")
        n: int = Field(1, ge=1, le=limits.max_n, description="How many images to draw.")
        guidance_scale: float = Field(default_guidance_scale, ge=0.0, le=limits.max_guidance_scale,
                                      allow_inf_nan=False,
                                      description="Classifier-free guidance; 1 turns it off.")
        seed: int | None = Field(None, ge=0, le=MAX_SEED,
                                 description="Image i is drawn with seed + i; omit for a random seed.")
        model: str | None = Field(None, max_length=200, description="The served model's id (GET /v1/models).")
        size: str | None = Field(None, max_length=20, description="WxH: the model's size or an integer multiple "
                                                                  "of it (upscaled, nearest neighbour).")
        response_format: str = Field("b64_json", max_length=20, description="Only b64_json (base64 PNGs).")
        user: str | None = Field(None, max_length=256, description="Accepted for OpenAI clients; unused.")
        quality: str | None = Field(None, max_length=32, description="Accepted for OpenAI clients; ignored.")
        style: str | None = Field(None, max_length=32, description="Accepted for OpenAI clients; ignored.")

    return ImageGenerationRequest


# -- chat completions (OpenAI's vision message format) -------------------------------------------


class _Lenient(BaseModel):
    """OpenAI's message objects: unknown keys inside them (``detail``, ``name``...) are ignored."""

    model_config = ConfigDict(extra="ignore")


class ImageUrl(_Lenient):
    url: str = Field(description="A data:image/...;base64, URL. Remote URLs are refused.")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageUrl


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


def chat_request_model(limits: Limits) -> type[BaseModel]:
    class ChatCompletionRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        model: str = Field(max_length=200, description="The served model's id (GET /v1/models).")
        messages: list[ChatMessage] = Field(min_length=1, max_length=64)
        max_tokens: int | None = Field(None, ge=1, description="Longest reply, in tokens.")
        max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens (newer name).")
        temperature: float | None = Field(None, ge=0.0, le=2.0, allow_inf_nan=False,
                                          description="Captions: 0 (the default) is greedy. Answers are greedy.")
        top_p: float | None = Field(None, gt=0.0, le=1.0, description="Captions only.")
        seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed of a sampled caption (temperature > 0).")
        n: int = Field(1, ge=1, le=1, description="Only 1.")
        stream: bool = False
        stream_options: StreamOptions | None = None
        user: str | None = Field(None, max_length=256, description="Accepted; unused.")

    return ChatCompletionRequest


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CaptionResponse(BaseModel):
    captions: list[str]
    model: str
    timings_ms: dict[str, float] = Field(
        description="decode: image decoding; queue: longest wait for a batch; model: longest model "
                    "batch; total: whole request inside the server.")


class GeneratedImage(BaseModel):
    b64_json: str = Field(description="A PNG, base64-encoded.")
    seed: int = Field(description="The seed this image was drawn with (send it back to redraw it).")
    revised_prompt: str = Field(description="What the image was drawn from: the prompt itself, or the model's "
                                            "restatement of it for a model that rewrites prompts.")
    consistency: float | None = Field(default=None, description=(
        "An extension: the model's own score of the image against the prompt, from 0 to 1 (its verdict, or the "
        "probability of the least likely word of the prompt as the image's caption); absent for edits."))
    warnings: list[str] = Field(default_factory=list, description=(
        "An extension: what the model cannot draw of the prompt, and whether it judges the image a poor match."))


class ImageGenerationResponse(BaseModel):
    created: int
    data: list[GeneratedImage]
    model: str
    timings_ms: dict[str, float]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "unitok"
    capabilities: list[str]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
