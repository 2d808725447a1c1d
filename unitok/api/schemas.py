"""Request and response bodies. Request models are strict (no "3" for 3, no unknown fields) so a
wrong JSON type is a 422 that names the field rather than a silent coercion.

Request models are built per server from its ``Limits`` so the OpenAPI docs at ``/docs`` show
the limits that server enforces.
"""

from __future__ import annotations

from typing import Literal

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
        response_format: Literal["b64_json"] = Field("b64_json", description="Only base64 PNGs.")

    return ImageGenerationRequest


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
