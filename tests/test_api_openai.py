"""The HTTP API through the official ``openai`` Python client, unchanged, against a real uvicorn
server and a real tiny pipeline: what a user who points an OpenAI client at ``unitok serve`` gets.

The pipeline is random, so captions, answers and edits are gibberish; each is checked against
the pipeline's own output for the same input, so what the server adds (parsing, batching,
resizing) must change nothing.
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import openai
import pytest
import torch
from PIL import Image
from tiny_models import tiny_pipeline

from unitok.api.app import Batching, create_app
from unitok.api.backend import PipelineBackend
from unitok.api.images import Limits
from unitok.api.server import serve_in_background
from unitok.data.shapes import random_scene, render
from unitok.lm.sequences import image_segment_length

NAME = "tiny-openai"
CAPTION_TOKENS = 10


@pytest.fixture(scope="module")
def backend():
    return PipelineBackend(tiny_pipeline(initializer_range=0.3), name=NAME, max_caption_tokens=CAPTION_TOKENS)


@pytest.fixture(scope="module")
def url(backend):
    app = create_app(backend, limits=Limits(max_images=4, max_n=4, max_upscale=4), batching=Batching(max_wait_ms=5))
    with serve_in_background(app) as base_url:
        yield base_url


@pytest.fixture
def client(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def scene(seed: int) -> Image.Image:
    return render(random_scene(np.random.default_rng(seed)), 64)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image: Image.Image, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(png(image)).decode()}"


def decoded(b64_json: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64_json)))


def vision_message(*images: Image.Image, text: str | None = None, media_type: str = "image/png") -> list[dict]:
    parts = [{"type": "text", "text": text}] if text is not None else []
    parts += [{"type": "image_url", "image_url": {"url": data_url(image, media_type), "detail": "low"}}
              for image in images]
    return [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": parts}]


# -- models and drawing ---------------------------------------------------------------------------


def test_models_list_names_the_served_model(client):
    assert [model.id for model in client.models.list()] == [NAME]


def test_images_generate_with_model_n_size_format_and_user(client, backend, url):
    native = backend.image_size
    result = client.images.generate(model=NAME, prompt="a red circle", n=2, size=f"{2 * native}x{2 * native}",
                                    response_format="b64_json", user="user-42", quality="standard", style="vivid",
                                    extra_body={"seed": 5, "guidance_scale": 2.0})
    images = [decoded(d.b64_json) for d in result.data]
    assert [im.size for im in images] == [(2 * native, 2 * native)] * 2
    assert [d.revised_prompt for d in result.data] == ["a red circle"] * 2
    # The large image is the model's own, each pixel a 2x2 block (nearest neighbour).
    drawn = backend.pipeline("a red circle", guidance_scale=2.0, generator=torch.Generator().manual_seed(6)).images[0]
    assert images[1].convert("RGB").tobytes() == drawn.resize((2 * native, 2 * native), Image.Resampling.NEAREST).tobytes()
    # "auto" and no size are the model's own size.
    auto = client.images.generate(model=NAME, prompt="a red circle", size="auto", extra_body={"seed": 6,
                                                                                               "guidance_scale": 2.0})
    assert decoded(auto.data[0].b64_json).convert("RGB").tobytes() == drawn.tobytes()


def test_a_model_that_is_not_served_is_a_404_in_openais_error_shape(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.images.generate(model="dall-e-3", prompt="a red circle")
    error = caught.value
    assert error.status_code == 404 and error.code == "model_not_found" and error.param == "model"
    assert NAME in error.message and "dall-e-3" in error.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=vision_message(scene(1)))


def test_sizes_the_model_cannot_give_are_a_400_listing_those_it_can(client, backend):
    native = backend.image_size
    for size in ("1024x768", f"{native + 1}x{native + 1}", f"{5 * native}x{5 * native}", "big"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.images.generate(model=NAME, prompt="a red circle", size=size)
        assert caught.value.param == "size" and f"{native}x{native}, {2 * native}x{2 * native}" in caught.value.message


def test_url_responses_are_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model=NAME, prompt="a red circle", response_format="url")
    assert "b64_json" in caught.value.message and caught.value.param == "response_format"


# -- chat completions: captions and answers --------------------------------------------------------


def test_chat_with_an_image_and_no_text_is_its_caption_with_honest_usage(client, backend):
    image = scene(3)
    expected = backend.pipeline.caption([image], max_new_tokens=CAPTION_TOKENS)[0]
    # A data URL with a parameter before ;base64 (RFC 2397).
    completion = client.chat.completions.create(model=NAME, messages=vision_message(
        image, media_type="image/png;charset=utf-8"))
    assert completion.object == "chat.completion" and completion.model == NAME
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == expected
    written = backend.count_tokens(expected)
    assert completion.usage.prompt_tokens == image_segment_length(backend.pipeline.vocabulary)
    assert completion.usage.completion_tokens == written
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + written
    assert completion.choices[0].finish_reason == ("length" if written >= CAPTION_TOKENS else "stop")


def test_chat_describes_several_images_and_honours_max_tokens(client, backend):
    images = [scene(4), scene(5)]
    expected = backend.pipeline.caption(images, max_new_tokens=3)
    completion = client.chat.completions.create(model=NAME, max_tokens=3,
                                                messages=vision_message(*images, text="Describe these images."))
    assert completion.choices[0].message.content == f"Image 1: {expected[0]}\nImage 2: {expected[1]}"
    assert completion.usage.prompt_tokens == 2 * image_segment_length(backend.pipeline.vocabulary)


def test_chat_with_a_question_is_the_models_answer(client, backend):
    image, question = scene(6), "what color is the circle?"
    expected = backend.pipeline.answer([image], [question])[0]
    completion = client.chat.completions.create(model=NAME, messages=vision_message(image, text=question))
    assert completion.choices[0].message.content == expected
    assert completion.usage.prompt_tokens == backend.reading_tokens(question)


def test_sampled_captions_are_seeded(client):
    messages = vision_message(scene(7))
    first = client.chat.completions.create(model=NAME, messages=messages, temperature=1.0, seed=11)
    again = client.chat.completions.create(model=NAME, messages=messages, temperature=1.0, seed=11)
    assert first.choices[0].message.content == again.choices[0].message.content


def test_streamed_chat_is_openais_chunk_format_and_matches_the_plain_answer(client, url):
    messages = vision_message(scene(8))
    plain = client.chat.completions.create(model=NAME, messages=messages)
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == plain.usage.total_tokens
    # On the wire: server-sent events ending in [DONE].
    raw = httpx.post(f"{url}/v1/chat/completions", json={"model": NAME, "messages": messages, "stream": True},
                     timeout=60)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.rstrip().endswith("data: [DONE]")


def test_chat_requests_it_cannot_serve_get_a_400_that_says_what_to_send(client):
    with pytest.raises(openai.BadRequestError, match="no image"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hello"}])
    with pytest.raises(openai.BadRequestError, match="at most 4"):
        client.chat.completions.create(model=NAME, messages=vision_message(*[scene(i) for i in range(5)]))
    with pytest.raises(openai.UnprocessableEntityError, match="URLs are not fetched"):
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}])


def test_a_model_without_the_answering_task_refuses_questions_but_still_captions(url):
    older = PipelineBackend(tiny_pipeline(special_names=("boi", "eoi", "uncond")), name="older")
    with serve_in_background(create_app(older)) as older_url, \
            openai.OpenAI(base_url=f"{older_url}/v1", api_key="unused", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="older", messages=vision_message(scene(1), text="what color?"))
        assert caught.value.code == "unsupported_task" and "describe" in caught.value.message
        caption = client.chat.completions.create(model="older", messages=vision_message(scene(1), text="describe"))
        assert caption.choices[0].message.content == older.pipeline.caption([scene(1)])[0]
        with pytest.raises(openai.BadRequestError, match="cannot edit"):
            client.images.edit(model="older", image=("a.png", png(scene(1)), "image/png"), prompt="make it blue")


# -- edits ----------------------------------------------------------------------------------------


def test_images_edit_is_the_pipelines_edit(client, backend):
    image, instruction = scene(9), "make the circle blue"
    native = backend.image_size
    result = client.images.edit(model=NAME, image=("scene.png", png(image), "image/png"), prompt=instruction, n=1,
                                size=f"{native}x{native}", response_format="b64_json")
    expected = backend.pipeline.edit([image], [instruction]).images[0]
    assert decoded(result.data[0].b64_json).convert("RGB").tobytes() == expected.tobytes()
    # Several different edits need sampling; greedy ones would be copies.
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.images.edit(model=NAME, image=("scene.png", png(image), "image/png"), prompt=instruction, n=2)
    sampled = client.images.edit(model=NAME, image=("scene.png", png(image), "image/png"), prompt=instruction, n=2,
                                 extra_body={"temperature": 1.0, "seed": 3})
    assert len(sampled.data) == 2 and [d.seed for d in sampled.data] == [3, 4]


# -- plain HTTP details ---------------------------------------------------------------------------


def test_head_healthz_and_request_ids(url):
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.head("/healthz").status_code == 200
        echoed = http.get("/v1/models", headers={"X-Request-ID": "trace-123"})
        assert echoed.headers["x-request-id"] == "trace-123"
        generated = {http.get("/healthz").headers["x-request-id"] for _ in range(2)}
        assert len(generated) == 2 and all(len(g) == 32 for g in generated)
        refused = http.get("/v1/models", headers={"X-Request-ID": "bad id\twith spaces"})
        assert refused.headers["x-request-id"] != "bad id\twith spaces"
        assert http.post("/v1/nothing").headers["x-request-id"]  # errors carry one too
