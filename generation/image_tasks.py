"""What the pipeline does with an image it is given: caption it, answer a question about it,
verify it against a prompt, edit it as an instruction says. A mixin of ``UniTokPipeline`` (its
``lm``, ``text_tokenizer``, ``image_tokenizer`` and ``vocabulary``), kept apart from drawing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from generation.decoder import context_length
from generation.outputs import Generators, UniTokPipelineOutput, check_call, per_row
from generation.rerank import candidate_generators, rerank_edits, verification_scores
from generation.sampler import generate_answers, generate_captions, sample_edited_codes
from generation.settings import SamplingOptions
from tokenizer.images import pil_to_tensor
from unitok.errors import UserError
from unitok.lm.sequences import image_segment_length
from unitok.lm.text_tokenizer import decode_text

Images = Image.Image | Sequence[Image.Image] | torch.Tensor


class ImageTasksMixin:
    @torch.inference_mode()
    def encode_images(self, images: Images,
                      batch_size: int = 32) -> torch.Tensor:
        """``[N, h, w]`` codes of PIL images (read as ``tokenizer.images.pil_to_tensor`` reads
        them) or of a ``[N, 3, H, W]`` tensor in [-1, 1]."""
        if isinstance(images, Image.Image):
            images = [images]
        if not isinstance(images, torch.Tensor):
            images = pil_to_tensor(list(images), self.image_tokenizer.image_size)
        # One batch at a time: the encoder's sums, and so a code now and then, depend on the batch.
        return torch.cat([self.image_tokenizer.encode(images[start : start + batch_size].to(
            self.image_tokenizer.device, self.image_tokenizer.dtype)) for start in range(0, images.shape[0], batch_size)])

    @torch.inference_mode()
    def caption(
        self,
        images: Images,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: Generators = None,
        batch_size: int = 32,
    ) -> list[str]:
        """One caption per image (PIL images, or a ``[B, 3, H, W]`` tensor in [-1, 1]); greedy by
        default. A caption ends at EOS, after ``max_new_tokens`` or where the LM's context ends."""
        if max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        context = context_length(self.lm)
        if context is not None:
            max_new_tokens = max(1, min(max_new_tokens, context - image_segment_length(self.vocabulary)))
        options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p)
        codes = self.encode_images(images, batch_size)
        generators = per_row(generator, codes.shape[0])
        captions = []
        for start in range(0, codes.shape[0], batch_size):
            ids = generate_captions(
                self.lm, self.vocabulary, codes[start : start + batch_size], max_new_tokens=max_new_tokens,
                options=options,
                generator=generators[start : start + batch_size] if isinstance(generators, list) else generators,
            )
            captions.extend(decode_text(self.text_tokenizer, row) for row in ids)
        return captions

    @torch.inference_mode()
    def answer(self, images: Images, questions: str | Sequence[str],
               batch_size: int = 32) -> list[str]:
        """One short answer per (image, question) pair, greedy (an LM trained with the answering task)."""
        self._check_task("answer", "answer questions")
        codes, question_ids = self._pairs(images, questions, batch_size)
        return [decode_text(self.text_tokenizer, ids) for start in range(0, len(question_ids), batch_size)
                for ids in generate_answers(self.lm, self.vocabulary, codes[start : start + batch_size],
                                            question_ids[start : start + batch_size])]

    @torch.inference_mode()
    def verify(self, images: Images, prompts: str | Sequence[str],
               batch_size: int = 32) -> list[float]:
        """Per (image, prompt) pair, the model's probability that the image shows the prompt."""
        self._check_task("verify", "verify images against prompts")
        codes, prompt_ids = self._pairs(images, prompts, batch_size)
        return verification_scores(self.lm, self.vocabulary, codes, prompt_ids, batch_size).tolist()

    @torch.inference_mode()
    def edit(self, images: Images, instructions: str | Sequence[str], temperature: float | None = None,
             num_candidates: int | None = None, consensus_weight: float | None = None, generator: Generators = None,
             output_type: str = "pil", batch_size: int = 16, return_dict: bool = True) -> UniTokPipelineOutput | tuple:
        """Each image edited as its instruction says (an LM trained with the editing task).

        ``temperature`` (0: greedy), ``num_candidates`` (sample that many edits per image and keep
        the one the model judges best: ``generation.rerank.rerank_edits``) and ``consensus_weight``
        left at None take the model's ``default_edit_*``. One ``generator`` per image makes each
        edit depend only on its image, instruction, settings and generator.
        """
        self._check_task("edit", "edit images")
        check_call(["edit"], 1, output_type, batch_size)
        settings = self.edit_settings(temperature, num_candidates, consensus_weight)
        codes, instruction_ids = self._pairs(images, instructions, batch_size)
        candidates = settings.num_candidates
        generators = per_row(generator, codes.shape[0])
        if candidates > 1:
            generators = candidate_generators(generators, codes.shape[0], candidates)
        sources = codes.repeat_interleave(candidates, dim=0)
        row_ids = [ids for ids in instruction_ids for _ in range(candidates)]
        edited = []
        with self.progress_bar(total=sources.shape[0] * self.vocabulary.tokens_per_image) as bar:
            for start in range(0, sources.shape[0], batch_size):
                edited.append(sample_edited_codes(
                    self.lm, self.vocabulary, sources[start : start + batch_size], row_ids[start : start + batch_size],
                    options=settings.options,
                    generator=generators[start : start + batch_size] if isinstance(generators, list) else generators,
                    progress=bar.update))
        result = torch.cat(edited)
        if candidates > 1:
            result = rerank_edits(self.lm, self.vocabulary, sources, row_ids, result, candidates=candidates,
                                  consensus_weight=settings.consensus_weight, batch_size=batch_size)
        images = result if output_type == "latent" else self.decode_codes(result, output_type)
        return UniTokPipelineOutput(images=images) if return_dict else (images,)

    def _pairs(self, images, texts: str | Sequence[str], batch_size: int) -> tuple[torch.Tensor, list[list[int]]]:
        """Codes of the images and ids of their texts, one text per image (checked to fit beside it)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        codes = self.encode_images(images, batch_size)
        if len(texts) != codes.shape[0]:
            raise UserError(f"got {len(texts)} texts for {codes.shape[0]} images: give one per image")
        for text in texts:
            if not text.strip():
                raise UserError("a question, prompt or instruction is empty")
        return codes, [self.encode_prompt(text) for text in texts]

    def _check_task(self, special: str, what: str) -> None:
        if not self.vocabulary.has(special):
            raise UserError(f"this model cannot {what}: its vocabulary has no <|{special}|> token (an LM trained "
                            "before that task existed)")
