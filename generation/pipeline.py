"""``UniTokPipeline``: text-to-image and captioning with one LM, as a diffusers pipeline.

Three saved parts: ``lm`` (a plain transformers causal LM), ``text_tokenizer`` (already extended
with UniTok's tokens) and ``image_tokenizer`` (the VQ tokenizer: its decoder renders codes, its
encoder reads images). The vocabulary layout travels in ``lm/unitok_vocabulary.json`` and is
checked against all three on load. Sampling lives in ``sampler``, judging in ``rerank``, settings
in ``settings``, devices in ``runtime``; the on-disk layout is in ``docs/sampling.md``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import is_accelerate_available
from PIL import Image
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from generation import runtime
from generation.decoder import context_length
from generation.image_tasks import ImageTasksMixin
from generation.outputs import Generators, UniTokPipelineOutput, check_call, per_row
from generation.rerank import candidate_generators, caption_consistency, rerank, verification_scores
from generation.rewriting import PromptRewrite, drawing_warnings, restate, word_at
from generation.sampler import sample_image_codes
from generation.settings import (
    CONSISTENCY_WARNING,
    DEFAULT_GUIDANCE_SCALE,
    REWRITE_CONFIDENCE,
    DrawSettings,
    EditSettings,
    check_can_rewrite,
)
from tokenizer.images import tensor_to_pil
from tokenizer.model import VQTokenizer
from unitok.atomic import atomic_directory
from unitok.default_model import resolve_model_dir
from unitok.errors import UserError
from unitok.lm.image_positions import image_positions_saved_apart, load_image_positions
from unitok.lm.model import check_parts, load_unified_lm
from unitok.lm.sequences import prompt_room
from unitok.lm.text_tokenizer import encode_text
from unitok.vocabulary import UnifiedVocabulary

logger = logging.getLogger(__name__)


class UniTokPipeline(ImageTasksMixin, DiffusionPipeline):
    """Draw images for prompts (``__call__``) and read or edit images (``caption``, ``answer``,
    ``verify``, ``edit``: ``generation.image_tasks``) with one LM."""

    model_cpu_offload_seq = "lm->image_tokenizer"

    def __init__(
        self,
        lm: PreTrainedModel,
        text_tokenizer: PreTrainedTokenizerBase,
        image_tokenizer: VQTokenizer,
        vocabulary: UnifiedVocabulary | None = None,
        default_guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        default_temperature: float = 1.0,
        default_top_k: int | None = None,
        default_top_p: float | None = None,
        default_num_candidates: int = 1,
        default_consensus_weight: float = 0.0,
        default_rewrite_prompts: bool = False,
        default_judge: str | None = None,
        default_edit_temperature: float = 0.0,
        default_edit_num_candidates: int = 1,
        default_edit_consensus_weight: float = 0.0,
    ):
        """``default_*``: what ``__call__`` (and so the CLI and the HTTP API) uses when the caller
        does not say, saved in ``model_index.json`` with the parts: the best settings belong to a
        model (a photo model wants temperature 1, an exact domain such as Shapes draws best near
        greedy). ``default_rewrite_prompts`` only for an LM trained on the rewriting task;
        ``default_judge`` None judges by the verdict where the LM was trained to verify;
        ``default_edit_*`` are ``edit``'s (greedy unless set)."""
        super().__init__()
        if vocabulary is None:
            raise ValueError("UniTokPipeline needs the LM's vocabulary: build it with UniTokPipeline.from_parts "
                             "or load it with UniTokPipeline.from_pretrained")
        check_parts(vocabulary, lm, text_tokenizer, image_tokenizer)
        self.register_modules(lm=lm, text_tokenizer=text_tokenizer, image_tokenizer=image_tokenizer)
        self.register_to_config(default_guidance_scale=default_guidance_scale, default_temperature=default_temperature,
                                default_top_k=default_top_k, default_top_p=default_top_p,
                                default_num_candidates=default_num_candidates,
                                default_consensus_weight=default_consensus_weight,
                                default_rewrite_prompts=default_rewrite_prompts, default_judge=default_judge,
                                default_edit_temperature=default_edit_temperature,
                                default_edit_num_candidates=default_edit_num_candidates,
                                default_edit_consensus_weight=default_edit_consensus_weight)
        self.vocabulary = vocabulary
        self.sampling_settings()  # the defaults are checked like any caller's values
        self.edit_settings()

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
        """diffusers' layout plus the vocabulary (and any image-position table) in ``lm/``, written
        atomically: the target is never half written."""
        with atomic_directory(save_directory) as tmp:
            with image_positions_saved_apart(self.lm, tmp / "lm"):
                super().save_pretrained(tmp, **kwargs)
            self.vocabulary.save(tmp / "lm")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> UniTokPipeline:
        """Load a folder written by ``save_pretrained`` (local folders only: nothing is downloaded)."""
        folder = resolve_model_dir(pretrained_model_name_or_path)
        vocabulary = UnifiedVocabulary.load(folder / "lm")
        # diffusers asks for accelerate (with a warning) unless told not to; it saves little here.
        kwargs.setdefault("low_cpu_mem_usage", is_accelerate_available())
        pipeline = super().from_pretrained(folder, vocabulary=vocabulary, **kwargs)
        load_image_positions(pipeline.lm, vocabulary, folder / "lm")
        if not {"torch_dtype", "dtype"} & kwargs.keys() and pipeline.lm.dtype != torch.float32:
            # A folder saved in half precision (to keep it small) loads in fp32, the CPU default;
            # configure_runtime picks half precision again on a GPU.
            pipeline.lm.to(torch.float32)
        return pipeline

    # -- device and dtype ----------------------------------------------------------------------

    def to(self, *args, **kwargs) -> UniTokPipeline:
        """diffusers' ``to``, except that the image tokenizer stays in fp32: its quantizer
        computes in fp32 and fails on half-precision weights."""
        super().to(*args, **kwargs)
        self.image_tokenizer.to(torch.float32)
        return self

    def configure_runtime(self, device: str | torch.device | None = None,
                          dtype: torch.dtype | str | None = None) -> str:
        """Move to ``device`` (default: CUDA when available) with the LM in ``dtype`` (a dtype or its
        name; default or ``"auto"``: the fastest this hardware computes in, i.e. bf16 on CPUs with
        bf16 units and on GPUs, fp16 on GPUs without bf16, else fp32) and pick the decoder's
        attention; returns and logs the line that says how it runs and why (``generation.runtime``)."""
        device = runtime.resolve_device(device)
        asked, dtype = dtype, runtime.lm_dtype_for(device, dtype)
        self.to(device)  # no dtype here: diffusers warns on every dtype cast of the image tokenizer
        self.lm.to(dtype)
        line = runtime.describe(device, dtype, self.lm, self.image_tokenizer,
                                runtime.enable_decoder_attention(self, device), runtime.dtype_reason(device, asked))
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
        generator: Generators = None,
        output_type: str = "pil",
        return_dict: bool = True,
        batch_size: int = 16,
        num_candidates: int | None = None,
        consensus_weight: float | None = None,
        rewrite_prompts: bool | None = None,
        judge: str | None = None,
    ) -> UniTokPipelineOutput | tuple:
        """Draw ``num_images_per_prompt`` images for each prompt.

        Args:
            prompt: what to draw, one text or a list.
            num_images_per_prompt: images per prompt.
            guidance_scale: classifier-free guidance, one for all prompts or one per prompt; 1 is
                none (no unconditional rows).
            temperature, top_k, top_p: how codes are sampled; 0 is greedy, ``top_k=0`` and
                ``top_p=1`` switch a default top-k / top-p off.
            generator: one for the whole call, or one per image (image ``k`` of prompt ``i`` is
                image ``i * num_images_per_prompt + k``): then every image depends only on its
                prompt, settings and generator, never on the rest of the call or ``batch_size``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (diffusers' conventions) or ``"latent"``
                (the code grids).
            return_dict: a ``UniTokPipelineOutput`` (True) or a tuple ``(images,)``.
            batch_size: rows (images, or candidates when reranking) per forward pass.
            num_candidates: draw that many candidates per image and keep the one the model judges
                best (``generation.rerank``; needs temperature > 0).
            consensus_weight: weight of the candidates' agreement in that judgement (0: off).
            rewrite_prompts: draw and rerank from the model's restatement of each prompt in its
                own captioning words (``rewrite_prompts``) instead of the prompt itself.
            judge: how candidates are judged, "verdict" (the model's yes/no on the prompt) or
                "caption" (the prompt's likelihood as the candidate's caption; ``generation.rerank``).

            A sampling argument left at None takes the model's default (``self.config.default_*``).

        Returns:
            ``UniTokPipelineOutput``: ``images`` and ``drawn_prompts`` (what each prompt's images
            were drawn from).

        Examples:
            >>> import torch
            >>> from unitok import UniTokPipeline
            >>> from unitok.default_model import default_model_dir
            >>> pipe = UniTokPipeline.from_pretrained(default_model_dir())
            >>> image = pipe("a large red circle at the top left on a white background",
            ...              generator=torch.Generator().manual_seed(0)).images[0]
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        check_call(prompts, num_images_per_prompt, output_type, batch_size)
        settings = self.sampling_settings(
            guidance_scale=guidance_scale, temperature=temperature, top_k=top_k, top_p=top_p,
            num_candidates=num_candidates, consensus_weight=consensus_weight, rewrite_prompts=rewrite_prompts,
            judge=judge)
        scales = settings.scales_for(len(prompts))
        for text in prompts:  # refuse a prompt that does not fit before drawing anything
            self.encode_prompt(text)
        rewrites = self.rewrites(prompts, batch_size) if settings.rewrite_prompts or self.vocabulary.has("unknown") \
            else [PromptRewrite(p, "", False) for p in prompts]
        drawn_prompts = [r.text for r in rewrites] if settings.rewrite_prompts else prompts
        text_ids = [self.encode_prompt(text) for text in drawn_prompts]

        # One row per image (per candidate of an image when reranking).
        images_count, candidates = len(prompts) * num_images_per_prompt, settings.num_candidates
        generators = per_row(generator, images_count)
        if candidates > 1:
            generators = candidate_generators(generators, images_count, candidates)
        repeat = num_images_per_prompt * candidates
        row_ids = [ids for ids in text_ids for _ in range(repeat)]
        judged_ids = [self.encode_prompt(text) for text in prompts for _ in range(repeat)]  # judged by the prompt
        row_scales = [scale for scale in scales for _ in range(repeat)]
        with self.progress_bar(total=len(row_ids) * self.vocabulary.tokens_per_image) as bar:
            codes = sample_image_codes(self.lm, self.vocabulary, row_ids, guidance_scale=row_scales,
                                       options=settings.options, generator=generators, batch_size=batch_size,
                                       progress=bar.update)
        if candidates > 1:
            # A verdict judges the prompt as written; a caption's likelihood is judged in the model's own
            # captioning words, i.e. the rewrite where there is one.
            codes = rerank(self.lm, self.vocabulary, codes, judged_ids if settings.judge == "verdict" else row_ids,
                           candidates=candidates, consensus_weight=settings.consensus_weight, batch_size=batch_size,
                           judge=settings.judge)
        # Each image's consistency with its prompt, by the judge that picked it: the verdict on the
        # prompt as written, or the caption reading of the text drawn from.
        unlikely = None  # per image, the word of its prompt the caption judge least reads in it
        if settings.judge == "verdict":
            consistency = verification_scores(self.lm, self.vocabulary, codes, judged_ids[::candidates], batch_size)
        else:
            per_image = row_ids[::candidates]
            consistency, positions = caption_consistency(self.lm, self.vocabulary, codes, per_image, batch_size)
            unlikely = [word_at(self.text_tokenizer, ids, at) for ids, at in zip(per_image, positions, strict=True)]
        consistency = consistency.tolist()
        per_prompt = [slice(i * num_images_per_prompt, (i + 1) * num_images_per_prompt) for i in range(len(prompts))]
        warnings = [drawing_warnings(r, consistency[images], CONSISTENCY_WARNING[settings.judge],
                                     None if unlikely is None else unlikely[images])
                    for r, images in zip(rewrites, per_prompt, strict=True)]

        images = codes if output_type == "latent" else self.decode_codes(codes, output_type)
        if not return_dict:
            return (images,)
        return UniTokPipelineOutput(images=images, drawn_prompts=drawn_prompts, consistency=consistency,
                                    warnings=warnings)

    def sampling_settings(self, **given) -> DrawSettings:
        """The settings a drawing call uses: the values ``given`` (the sampling arguments of
        ``__call__``), the model's defaults for the rest."""
        return DrawSettings.resolve(self.config, self.vocabulary, **given)

    def edit_settings(self, temperature: float | None = None, num_candidates: int | None = None,
                      consensus_weight: float | None = None) -> EditSettings:
        """The settings an ``edit`` call uses: the values given, the model's ``default_edit_*`` for the rest."""
        return EditSettings.resolve(self.config, temperature, num_candidates, consensus_weight)

    @torch.inference_mode()
    def rewrite_prompts(self, prompts: str | Sequence[str], batch_size: int = 16) -> list[str]:
        """Each prompt as the LM restates it (its normal form: ``rewrites``), or as it is where the
        LM's restatement is not to be trusted."""
        return [r.text for r in self.rewrites(prompts, batch_size)]

    @torch.inference_mode()
    def rewrites(self, prompts: str | Sequence[str], batch_size: int = 16,
                 min_confidence: float = REWRITE_CONFIDENCE) -> list[PromptRewrite]:
        """How the LM restates each prompt, and what it says it cannot draw; a restatement is
        drawn from only where every token of it was chosen at least ``min_confidence`` sure
        (``generation.rewriting``)."""
        check_can_rewrite(self.vocabulary)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        text_ids = [self.encode_prompt(text) for text in prompts]
        return restate(self.lm, self.vocabulary, self.text_tokenizer, prompts, text_ids, batch_size, min_confidence)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt text -> text ids, checked to fit the LM's context beside a whole image."""
        ids = encode_text(self.text_tokenizer, prompt)
        room = prompt_room(self.vocabulary, context_length(self.lm))
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

