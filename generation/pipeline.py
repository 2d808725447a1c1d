"""``UniTokPipeline``: text-to-image and captioning with one LM, as a diffusers pipeline.

A thin composition of three saved parts (diffusers' "a pipeline is a readable composition"):

- ``lm``: the unified causal LM (a plain transformers checkpoint);
- ``text_tokenizer``: its text tokenizer (already extended with UniTok's tokens);
- ``image_tokenizer``: the VQ tokenizer, whose decoder renders codes to pixels and whose encoder
  turns images into codes for captioning.

The vocabulary layout (``unitok_vocabulary.json``) travels in the ``lm`` subfolder, so that
folder stays a complete UniTok LM export, and is checked against all three parts on load.

Layout on disk (``save_pretrained``)::

    model_index.json          names this class and the three parts, and the model's sampling
                              defaults for drawing (default_guidance_scale, default_temperature, ...)
    lm/                       config.json, model.safetensors, generation_config.json, unitok_vocabulary.json,
                              image_positions.safetensors (LMs with a grid-cell table only)
    text_tokenizer/           tokenizer.json, tokenizer_config.json, ...
    image_tokenizer/          config.json, diffusion_pytorch_model.safetensors
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.models.attention_processor import Attention
from diffusers.utils import is_accelerate_available, is_xformers_available
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from generation.decoder import context_length
from generation.default_model import resolve_model_dir
from generation.rerank import (
    candidate_generators,
    consensus_log_counts,
    prompt_log_likelihood,
    reads_as_its_prompt,
)
from generation.sampler import generate_captions, rewrite_prompts, sample_image_codes
from generation.token_choice import SamplingOptions
from tokenizer.images import pil_to_tensor, tensor_to_pil
from tokenizer.model import VQTokenizer
from unitok.atomic import atomic_directory
from unitok.errors import UserError
from unitok.lm.image_positions import image_positions_saved_apart, load_image_positions
from unitok.lm.model import load_unified_lm
from unitok.lm.text_tokenizer import check_tokenizer, decode_text, encode_text
from unitok.vocabulary import UnifiedVocabulary

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")  # "latent": the code grids themselves, [N, h, w] long
WRITTEN_TOKENS = 64  # the most text ids the LM writes on its own for a consensus reading or a rewrite


@dataclass
class UniTokPipelineOutput(ImagePipelineOutput):
    """diffusers' image output plus ``drawn_prompts``: per prompt, the text its images were drawn
    from (the prompt itself, or the LM's rewrite of it; OpenAI's images API calls it revised_prompt)."""

    drawn_prompts: list[str] | None = None


class UniTokPipeline(DiffusionPipeline):
    """Draw images for prompts (``__call__``) and describe images (``caption``) with one LM."""

    model_cpu_offload_seq = "lm->image_tokenizer"

    def __init__(
        self,
        lm: PreTrainedModel,
        text_tokenizer: PreTrainedTokenizerBase,
        image_tokenizer: VQTokenizer,
        vocabulary: UnifiedVocabulary | None = None,
        default_guidance_scale: float = 3.0,
        default_temperature: float = 1.0,
        default_top_k: int | None = None,
        default_top_p: float | None = None,
        default_num_candidates: int = 1,
        default_consensus_weight: float = 0.0,
        default_rewrite_prompts: bool = False,
    ):
        """``default_*``: what ``__call__`` (and so the CLI and the HTTP API) uses when the caller
        does not say. They are saved in ``model_index.json`` with the parts, because the best
        settings belong to a model: a photo model wants temperature 1, a model of an exact domain
        such as Shapes draws its best images near greedy. ``default_rewrite_prompts`` only for an
        LM trained on the rewriting task (``unitok.lm.sequences``)."""
        super().__init__()
        if vocabulary is None:
            raise ValueError("UniTokPipeline needs the LM's vocabulary: build it with UniTokPipeline.from_parts "
                             "or load it with UniTokPipeline.from_pretrained")
        check_parts(vocabulary, lm, text_tokenizer, image_tokenizer)
        _scales(default_guidance_scale, 1)
        _draw_settings(default_guidance_scale, default_temperature, default_top_k, default_top_p,
                       default_num_candidates, default_consensus_weight, default_rewrite_prompts, vocabulary)
        self.register_modules(lm=lm, text_tokenizer=text_tokenizer, image_tokenizer=image_tokenizer)
        self.register_to_config(default_guidance_scale=float(default_guidance_scale),
                                default_temperature=float(default_temperature), default_top_k=default_top_k,
                                default_top_p=default_top_p, default_num_candidates=int(default_num_candidates),
                                default_consensus_weight=float(default_consensus_weight),
                                default_rewrite_prompts=bool(default_rewrite_prompts))
        self.vocabulary = vocabulary

    # -- building, saving, loading -------------------------------------------------------------

    @classmethod
    def from_parts(
        cls, lm_dir: str | os.PathLike, image_tokenizer_dir: str | os.PathLike, dtype: torch.dtype | None = None,
        **sampling_defaults,
    ) -> UniTokPipeline:
        """Assemble a pipeline from an exported LM folder and an image tokenizer folder
        (``sampling_defaults``: the ``default_*`` arguments of ``__init__``)."""
        lm, text_tokenizer, vocabulary = load_unified_lm(lm_dir, dtype=dtype)
        folder = Path(image_tokenizer_dir)
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder} is not an image tokenizer folder (no config.json); "
                            "export one with `unitok tokenizer export`")
        image_tokenizer = VQTokenizer.from_pretrained(folder, low_cpu_mem_usage=is_accelerate_available()).eval()
        return cls(lm=lm.eval(), text_tokenizer=text_tokenizer, image_tokenizer=image_tokenizer, vocabulary=vocabulary,
                   **sampling_defaults)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """diffusers' layout plus the vocabulary (and any image-position table) in ``lm/``; written to a temporary sibling
        folder and renamed into place, so the target is never half written."""
        with atomic_directory(save_directory) as tmp:
            with image_positions_saved_apart(self.lm, tmp / "lm"):
                super().save_pretrained(tmp, **kwargs)
            self.vocabulary.save(tmp / "lm")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> UniTokPipeline:
        """Load a folder written by ``save_pretrained`` (local folders only: nothing is downloaded)."""
        folder = resolve_model_dir(pretrained_model_name_or_path)
        vocabulary = UnifiedVocabulary.load(folder / "lm")
        # diffusers asks for accelerate (with a warning) unless told not to; it saves little on a
        # model this size, so it is optional here.
        kwargs.setdefault("low_cpu_mem_usage", is_accelerate_available())
        pipeline = super().from_pretrained(folder, vocabulary=vocabulary, **kwargs)
        load_image_positions(pipeline.lm, vocabulary, folder / "lm")
        if not {"torch_dtype", "dtype"} & kwargs.keys() and pipeline.lm.dtype != torch.float32:
            # A folder saved in half precision (to keep it small) loads in fp32, the CPU default;
            # configure_runtime picks half precision again on a GPU.
            pipeline.lm.to(torch.float32)
        return pipeline

    # -- device, dtype, attention --------------------------------------------------------------

    def to(self, *args, **kwargs) -> UniTokPipeline:
        """diffusers' ``to``, except that the image tokenizer stays in fp32.

        Its vector-quantize-pytorch quantizer computes in fp32 and fails on half-precision
        weights; the tokenizer is small next to the LM, so this costs little on a GPU.
        """
        super().to(*args, **kwargs)
        self.image_tokenizer.to(torch.float32)
        return self

    def configure_runtime(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> str:
        """Move to ``device`` (default: CUDA when available) in the right dtype; pick attention.

        CPU runs in fp32. CUDA runs the LM in bf16 when the GPU supports it, else fp16 (the image
        tokenizer stays fp32, see ``to``). The image
        decoder's attention layers use xformers when it is installed, PyTorch SDPA otherwise; the
        LM uses the attention implementation transformers chose (SDPA by default). Returns (and
        logs) one line saying which.
        """
        device = _device(device) if device is not None else _best_device()
        if dtype is None:
            dtype = torch.float32 if device.type != "cuda" else (
                torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
        self.to(device)  # no dtype here: diffusers warns on every dtype cast of the image tokenizer
        self.lm.to(dtype)
        decoder_attention = "sdpa"
        if device.type == "cuda" and is_xformers_available():
            try:
                self.enable_xformers_memory_efficient_attention()
                decoder_attention = "xformers"
            except (ModuleNotFoundError, ValueError) as error:
                logger.warning("xformers is installed but unusable (%s); using SDPA", error)
        layers = sum(isinstance(m, Attention) for m in self.image_tokenizer.modules())
        lm_attention = getattr(self.lm.config, "_attn_implementation", None) or "default"
        line = (f"UniTok on {device} in {str(dtype).removeprefix('torch.')}: LM attention {lm_attention}, "
                f"image decoder attention {decoder_attention} ({layers} attention layers)")
        logger.info(line)
        return line

    # -- text-to-image ---------------------------------------------------------------------------

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str],
        num_images_per_prompt: int = 1,
        guidance_scale: float | Sequence[float] | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        batch_size: int = 16,
        num_candidates: int | None = None,
        consensus_weight: float | None = None,
        rewrite_prompts: bool | None = None,
    ) -> UniTokPipelineOutput | tuple:
        """Draw ``num_images_per_prompt`` images for each prompt.

        ``guidance_scale``: one for all prompts or one per prompt; 1 means no guidance (and no
        unconditional rows). ``guidance_scale``, ``temperature``, ``top_k``, ``top_p``: None takes
        the model's default (``self.config.default_*``); ``top_k=0`` / ``top_p=1`` turn a default
        top-k / top-p off. ``num_candidates`` (default: the model's): draw that many candidates
        per image and keep the one whose prompt the LM finds likeliest as its caption
        (``generation.rerank``; needs temperature > 0); ``consensus_weight`` (default: the
        model's; 0 = off) adds that weight times the log of how many candidates the LM reads as
        the same caption (each candidate is captioned for it), except for an image whose prompt
        is word for word one of those readings. ``rewrite_prompts`` (default: the model's): draw
        (and rerank) from the LM's restatement of each prompt as a reference caption instead of the
        prompt itself (``rewrite_prompt``); ``drawn_prompts`` in the output says what was drawn. ``generator``: one for the whole call, or
        one per image (image ``k`` of prompt ``i`` is image ``i * num_images_per_prompt + k``) to
        make each image independent of the others in the call and of ``batch_size`` (how many
        images, or candidates when reranking, share a forward pass).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise UserError("give at least one prompt")
        if num_images_per_prompt <= 0:
            raise UserError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        if output_type not in OUTPUT_TYPES:
            raise UserError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if batch_size <= 0:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        settings = self.sampling_settings(guidance_scale, temperature, top_k, top_p, num_candidates, consensus_weight,
                                          rewrite_prompts)
        candidates = settings.num_candidates
        scales = _scales(settings.guidance_scale, len(prompts))
        text_ids = [self.encode_prompt(p) for p in prompts]
        if settings.rewrite_prompts:
            text_ids = self._rewritten_ids(text_ids, batch_size)
            drawn_prompts = [decode_text(self.text_tokenizer, ids) for ids in text_ids]
        else:
            drawn_prompts = prompts
        # One row per image (per candidate of an image when reranking); chunks of rows share a forward pass.
        images_count = len(prompts) * num_images_per_prompt
        generators = _per_row(generator, images_count)
        repeat = num_images_per_prompt * candidates
        row_ids = [ids for ids in text_ids for _ in range(repeat)]
        row_scales = [s for s in scales for _ in range(repeat)]
        if candidates > 1:
            generators = candidate_generators(generators, images_count, candidates)
        steps = self.vocabulary.tokens_per_image
        codes = []
        with self.progress_bar(total=len(row_ids) * steps) as bar:
            for start in range(0, len(row_ids), batch_size):
                stop = min(start + batch_size, len(row_ids))
                chunk_scales = row_scales[start:stop]
                codes.append(sample_image_codes(
                    self.lm, self.vocabulary, row_ids[start:stop],
                    guidance_scale=None if all(s == 1.0 for s in chunk_scales) else chunk_scales,
                    options=settings.options,
                    generator=generators if not isinstance(generators, list) else generators[start:stop],
                    progress=bar.update,
                ))
        codes = torch.cat(codes)
        if candidates > 1:
            scores = prompt_log_likelihood(self.lm, self.vocabulary, codes, row_ids, batch_size=batch_size)
            if settings.consensus_weight:
                length = self._reading_length()
                readings = [ids for start in range(0, codes.shape[0], batch_size)
                            for ids in generate_captions(self.lm, self.vocabulary, codes[start : start + batch_size],
                                                         max_new_tokens=length)]
                consensus = consensus_log_counts(readings, candidates).masked_fill(
                    reads_as_its_prompt(readings, row_ids, candidates), 0.0)
                scores = scores + settings.consensus_weight * consensus.to(scores)
            best = scores.view(images_count, candidates).argmax(dim=1).to(codes.device)
            codes = codes.view(images_count, candidates, *codes.shape[1:])[torch.arange(images_count), best]
        images = codes if output_type == "latent" else self.decode_codes(codes, output_type)
        return UniTokPipelineOutput(images=images, drawn_prompts=drawn_prompts) if return_dict else (images,)

    def sampling_settings(
        self,
        guidance_scale: float | Sequence[float] | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        num_candidates: int | None = None,
        consensus_weight: float | None = None,
        rewrite_prompts: bool | None = None,
    ) -> DrawSettings:
        """The settings a drawing call uses: the arguments given, the model's defaults for the
        rest (checked: a ``UserError`` names what is wrong)."""
        config = self.config

        def given_or_default(value, default):
            return default if value is None else value

        return _draw_settings(given_or_default(guidance_scale, config.default_guidance_scale),
                              given_or_default(temperature, config.default_temperature),
                              given_or_default(top_k, config.default_top_k),
                              given_or_default(top_p, config.default_top_p),
                              given_or_default(num_candidates, config.default_num_candidates),
                              given_or_default(consensus_weight, config.default_consensus_weight),
                              given_or_default(rewrite_prompts, config.default_rewrite_prompts),
                              self.vocabulary)

    def _image_segment_length(self) -> int:
        """Positions of ``[bos] <|boi|> codes <|eoi|>``, the start of a captioning sequence."""
        return (self.vocabulary.bos_id is not None) + 2 + self.vocabulary.tokens_per_image

    def _reading_length(self) -> int:
        """Caption tokens a consensus reading may run to: what the context leaves after an image."""
        return self._written_length(self._image_segment_length())

    def _rewrite_length(self) -> int:
        """Tokens a rewrite may run to: what the context leaves after the longest accepted prompt's
        ``[bos] prompt <|rewrite|>``, and no more than a prompt may have. The same for every prompt,
        so a prompt's rewrite never depends on the prompts beside it in a batch."""
        room = self._prompt_room()
        if room is None:
            return WRITTEN_TOKENS
        return max(1, min(room, self._written_length((self.vocabulary.bos_id is not None) + room + 1)))

    def _written_length(self, prefix_length: int) -> int:
        """``WRITTEN_TOKENS``, or fewer where the context ends sooner after ``prefix_length`` positions."""
        limit = context_length(self.lm)
        return WRITTEN_TOKENS if limit is None else max(1, min(WRITTEN_TOKENS, limit - prefix_length))

    @torch.inference_mode()
    def rewrite_prompt(self, prompt: str | Sequence[str], batch_size: int = 16) -> list[str]:
        """Each prompt as the LM restates it: the reference caption of the scene it describes.

        An LM trained with rewriting (``unitok.lm.sequences``) reads any phrasing but captions, and
        so judges reranking candidates, in one phrasing; drawing from that phrasing puts every
        prompt where the judge is sharpest. A prompt is kept as it is where the LM's restatement
        is empty or does not end within ``_rewrite_length`` tokens.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        rewritten = self._rewritten_ids([self.encode_prompt(p) for p in prompts], batch_size)
        return [decode_text(self.text_tokenizer, ids) for ids in rewritten]

    def _rewritten_ids(self, text_ids: list[list[int]], batch_size: int) -> list[list[int]]:
        _check_can_rewrite(self.vocabulary)
        max_new = self._rewrite_length()
        rewritten = []
        for start in range(0, len(text_ids), batch_size):
            chunk = text_ids[start : start + batch_size]
            for original, ids in zip(chunk, rewrite_prompts(self.lm, self.vocabulary, chunk, max_new_tokens=max_new),
                                     strict=True):
                rewritten.append(ids if ids else original)
        return rewritten

    def _prompt_room(self) -> int | None:
        """Prompt tokens that fit the context next to a whole image (None: no known limit).

        The longest sequence a prompt takes part in is reranking's captioning sequence
        ``[bos] <|boi|> codes <|eoi|> prompt <eos>`` (drawing's ``[bos] prompt <|boi|> codes
        <|eoi|>`` is one shorter), so that is the one counted: every setting fits the same prompts.
        """
        limit = context_length(self.lm)
        return None if limit is None else limit - self._image_segment_length() - 1  # - <eos>

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt text -> text ids, checked to fit the LM's context with a whole image beside it
        (``_prompt_room``)."""
        ids = encode_text(self.text_tokenizer, prompt)
        room = self._prompt_room()
        if room is not None and len(ids) > room:
            raise UserError(f"prompt is too long: {len(ids)} tokens, but the model's context of "
                            f"{context_length(self.lm)} positions leaves room for {max(room, 0)} prompt tokens next "
                            f"to an image ({self.vocabulary.tokens_per_image} codes): {prompt[:60]!r}")
        return ids

    def decode_codes(self, codes: torch.Tensor, output_type: str = "pil") -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Code grids ``[N, h, w]`` -> images through the image tokenizer's decoder.

        One image at a time: a convolution's float sums depend a little on the batch (~1e-6),
        enough to flip a rounded pixel now and then, and the same codes should give the same
        PNG whatever they were drawn with. Sampling, not decoding, is where the time goes.
        """
        codes = codes.to(self.image_tokenizer.device)
        pixels = torch.cat([self.image_tokenizer.decode(codes[i : i + 1]) for i in range(codes.shape[0])]).float()
        if output_type == "pil":
            return tensor_to_pil(pixels)
        unit = pixels.add(1.0).div(2.0).clamp(0.0, 1.0).cpu()  # diffusers' convention: [0, 1]
        return unit if output_type == "pt" else unit.permute(0, 2, 3, 1).numpy()

    # -- captioning ------------------------------------------------------------------------------

    @torch.inference_mode()
    def caption(
        self,
        images: Image.Image | Sequence[Image.Image] | torch.Tensor,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        batch_size: int = 32,
    ) -> list[str]:
        """One caption per image (PIL images, or a ``[B, 3, H, W]`` tensor in [-1, 1]); greedy by default."""
        if isinstance(images, Image.Image):
            images = [images]
        if not isinstance(images, torch.Tensor):
            images = pil_to_tensor(list(images), self.image_tokenizer.image_size)
        if max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        options = _options(temperature, top_k, top_p)
        generators = _per_row(generator, images.shape[0])
        captions = []
        for start in range(0, images.shape[0], batch_size):
            stop = min(start + batch_size, images.shape[0])
            batch = images[start:stop].to(self.image_tokenizer.device, self.image_tokenizer.dtype)
            codes = self.image_tokenizer.encode(batch)
            ids = generate_captions(
                self.lm, self.vocabulary, codes, max_new_tokens=max_new_tokens, options=options,
                generator=generators if not isinstance(generators, list) else generators[start:stop],
            )
            captions.extend(decode_text(self.text_tokenizer, row) for row in ids)
        return captions


def check_parts(
    vocabulary: UnifiedVocabulary, lm: PreTrainedModel, text_tokenizer: PreTrainedTokenizerBase, image_tokenizer: VQTokenizer
) -> None:
    """Fail with a clear message unless the three parts fit the vocabulary layout."""
    if image_tokenizer.config.quantizer == "residual":
        raise UserError("the pipeline needs one code per grid cell; a residual (multi-code) image tokenizer "
                        "does not fit the unified vocabulary")
    vocabulary.check_compatible(
        codebook_size=image_tokenizer.codebook_size,
        grid=image_tokenizer.grid_size,
        lm_vocab_size=lm.get_input_embeddings().num_embeddings,
    )
    check_tokenizer(text_tokenizer, vocabulary)


def _device(name: str | torch.device) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"unknown device {name!r} (use cpu, cuda, cuda:1, ...): {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return device


def _best_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _options(temperature: float, top_k: int | None, top_p: float | None) -> SamplingOptions:
    try:
        return SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p)
    except ValueError as error:
        raise UserError(str(error)) from error


@dataclass(frozen=True)
class DrawSettings:
    """How one drawing call samples (``UniTokPipeline.sampling_settings``)."""

    options: SamplingOptions
    guidance_scale: float | Sequence[float]
    num_candidates: int
    consensus_weight: float  # used only when reranking (num_candidates > 1)
    rewrite_prompts: bool


def _draw_settings(
    guidance_scale: float | Sequence[float], temperature: float, top_k: int | None, top_p: float | None,
    num_candidates: int, consensus_weight: float, rewrite_prompts: bool, vocabulary: UnifiedVocabulary,
) -> DrawSettings:
    options = _options(temperature, top_k, top_p)
    if not isinstance(rewrite_prompts, bool):
        raise UserError(f"rewrite_prompts must be True or False, got {rewrite_prompts!r}")
    if rewrite_prompts:
        _check_can_rewrite(vocabulary)
    if not (isinstance(consensus_weight, int | float) and math.isfinite(consensus_weight) and consensus_weight >= 0):
        raise UserError(f"consensus_weight must be a finite number >= 0, got {consensus_weight!r}")
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise UserError(f"num_candidates must be an integer >= 1, got {num_candidates!r}")
    if num_candidates > 1 and options.greedy:
        raise UserError(f"{num_candidates} candidates per image need sampling (temperature > 0): greedy decoding "
                        "draws the same candidate every time")
    return DrawSettings(options, guidance_scale, num_candidates, float(consensus_weight), rewrite_prompts)


def _check_can_rewrite(vocabulary: UnifiedVocabulary) -> None:
    if not vocabulary.can_rewrite:
        raise UserError("this model cannot rewrite prompts: its vocabulary has no <|rewrite|> token "
                        "(an LM built before rewriting existed); draw without rewriting")


def _scales(guidance_scale: float | Sequence[float], num_prompts: int) -> list[float]:
    scales = [guidance_scale] * num_prompts if isinstance(guidance_scale, int | float) else list(guidance_scale)
    if len(scales) != num_prompts:
        raise UserError(f"got {len(scales)} guidance scales for {num_prompts} prompts")
    if not all(np.isfinite(float(s)) for s in scales):
        raise UserError(f"guidance scale must be a finite number, got {guidance_scale}")
    return [float(s) for s in scales]


def _per_row(
    generator: torch.Generator | Sequence[torch.Generator] | None, rows: int
) -> torch.Generator | list[torch.Generator] | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generators = list(generator)
    if len(generators) != rows:
        raise UserError(f"got {len(generators)} generators for {rows} images: pass one per image, or a single one")
    return generators
