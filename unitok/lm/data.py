"""LM training data: code shards (from ``unitok tokenize``) -> batches of unified sequences.

The text tokenizer and the vocabulary belong to the model (a from-scratch BPE is trained when the
model is built), so the DataModule takes them from the LightningModule in ``setup``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from functools import partial
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from unitok.data.shards import SkipCounter, has_caption, iterate_samples, read_shards
from unitok.errors import UserError
from unitok.lm.packing import packing_is_exact
from unitok.lm.sequences import (
    Example,
    PromptIds,
    SampleTexts,
    TaskMix,
    answering_example,
    captioning_example,
    collate,
    editing_example,
    rewriting_example,
    sample_example,
    text_to_image_example,
    verifying_example,
)
from unitok.lm.text_tokenizer import encode_text
from unitok.vocabulary import UnifiedVocabulary


def caption_texts(source: str | list[str], limit: int | None = None) -> Iterator[str]:
    """Every text of a shard set (captions, prompts and their normal forms, questions, answers,
    instructions): the corpus a from-scratch BPE learns."""
    for index, sample in enumerate(iterate_samples(source)):
        if limit is not None and index >= limit:
            return
        if "caption" in sample:
            yield sample["caption"]
        meta = sample["meta"]
        yield from meta.get("paraphrases", [])
        for prompt in meta.get("prompts", []):
            yield from (prompt[k] for k in ("text", "normal", "unknown") if k in prompt)
        for question in meta.get("questions", []):
            yield question["question"]
            yield question["answer"]
        yield from (verdict["text"] for verdict in meta.get("verify", []))
        if "edit" in meta:
            yield meta["edit"]["instruction"]


class ExampleMaker:
    """Shard-sample transform: decoded sample -> list of training ``Example``s.

    training=True draws one sequence per sample from the task mix; training=False yields one
    sequence of every task the mix trains and the sample has text for, so validation measures each.
    A plain class (not a closure) so DataLoader workers can pickle it.
    """

    def __init__(self, tokenizer, vocab: UnifiedVocabulary, mix: TaskMix, training: bool, seed: int = 0):
        self.tokenizer, self.vocab, self.mix, self.training, self.seed = tokenizer, vocab, mix, training, seed
        self._rng: random.Random | None = None

    def _random(self) -> random.Random:
        # Seeded lazily inside each worker: torch gives every worker (and epoch) its own seed;
        # the rank keeps DDP processes from drawing the same task sequence.
        if self._rng is None:
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
            self._rng = random.Random(torch.initial_seed() + 7919 * rank + self.seed)
        return self._rng

    def texts(self, sample: dict[str, Any]) -> SampleTexts:
        """The sample's texts as ids (prompts from ``meta["prompts"]``, or plain ``paraphrases``)."""
        def ids(text: str) -> list[int]:
            return encode_text(self.tokenizer, text)

        meta, named = sample["meta"], sample.get("named_codes", {})
        prompts = [PromptIds(ids(p["text"]), ids(p["normal"]) if "normal" in p else None,
                             ids(p["unknown"]) if "unknown" in p else None) for p in meta.get("prompts", [])] \
            or [PromptIds(ids(text)) for text in meta.get("paraphrases", [])]
        edit = meta.get("edit")
        return SampleTexts(
            caption=ids(sample["caption"]), prompts=prompts,
            questions=[(ids(q["question"]), ids(q["answer"])) for q in meta.get("questions", [])],
            verdicts=[(ids(v["text"]), bool(v["match"])) for v in meta.get("verify", [])],
            edit=(ids(edit["instruction"]), _codes(named["edited"])) if edit and "edited" in named else None,
            target_codes=_codes(named["clean"]) if "clean" in named else None,
        )

    def __call__(self, sample: dict[str, Any]) -> list[Example]:
        codes = _codes(sample["codes"])
        texts = self.texts(sample)
        if self.training:
            return [sample_example(codes, texts, self.vocab, self.mix, self._random())]
        target = texts.target_codes if texts.target_codes is not None else codes
        examples = [text_to_image_example(texts.caption, target, self.vocab),
                    captioning_example(codes, texts.caption, self.vocab)]
        if self.mix.rewriting and texts.prompts:
            first = texts.prompts[0]
            examples.append(rewriting_example(first.text, first.normal or texts.caption, self.vocab, first.unknown))
        if self.mix.answering and texts.questions:
            examples.append(answering_example(codes, *texts.questions[0], self.vocab))
        if self.mix.verifying:  # one matching and one mismatching prompt: the accuracy is not one class's
            matching = [verdict for verdict in texts.verdicts if verdict[1]][:1]
            mismatching = [verdict for verdict in texts.verdicts if not verdict[1]][:1]
            examples += [verifying_example(codes, *verdict, self.vocab) for verdict in matching + mismatching]
        if self.mix.editing and texts.edit is not None:
            examples.append(editing_example(codes, *texts.edit, self.vocab))
        return examples


def _codes(array) -> torch.Tensor:
    return torch.from_numpy(array.astype("int64"))


def collate_examples(batch: list[list[Example]], vocab: UnifiedVocabulary, pack_length: int | None
                     ) -> dict[str, torch.Tensor]:
    return collate([example for examples in batch for example in examples], vocab, pack_length=pack_length)


class CodeShardDataModule(L.LightningDataModule):
    """Batches of unified sequences (every task of ``unitok.lm.sequences``) from code shards.
    Samples without a caption (images ``unitok data folder`` found no caption for) are left out:
    an empty caption would teach captioning to stop at once and drawing to ignore the prompt.

    Args:
        train_shards: folder, glob or brace pattern of training code shards.
        val_shards: the same for validation (every rank reads all of it).
        batch_size: sequences per batch (per device); validation batches hold one sequence per task
            and sample. Training batches mix tasks in stream order: batches of one length (and so
            mostly of one task) padded less but learned far less per step (docs/results.md).
        pack_length: sequences share rows of up to this many ids, each attending only to itself:
            the same losses as one sequence per row, with far less padding (docs/results.md); None:
            one sequence per row.
        samples_per_epoch: training samples per epoch and rank (the stream is resampled, endless).
        val_samples: validate on the first N validation samples (None: all).
        text_to_image, rewriting, answering, verifying, editing: each task's share of the training
            sequences; the rest is captioning.
        caption_dropout: probability of replacing a text-to-image caption by <|uncond|> (CFG).
        paraphrase: probability that a text-to-image prompt is one of the sample's prompts as written.
        normal_form: else, probability that it is a prompt's normal form (else the caption).
        num_workers: DataLoader worker processes.
        shuffle_buffer: samples in the training shuffle buffer.
    """

    def __init__(
        self,
        train_shards: str,
        val_shards: str | None = None,
        batch_size: int = 64,
        pack_length: int | None = 256,
        samples_per_epoch: int = 20_000,
        val_samples: int | None = 500,
        text_to_image: float = 0.5,
        caption_dropout: float = 0.1,
        paraphrase: float = 0.5,
        normal_form: float = 0.0,
        rewriting: float = 0.0,
        answering: float = 0.0,
        verifying: float = 0.0,
        editing: float = 0.0,
        num_workers: int = 1,
        shuffle_buffer: int = 2000,
        seed: int = 0,
    ):
        super().__init__()
        if pack_length is not None and pack_length < 1:
            raise UserError(f"data.pack_length must be a positive number of ids (or null: no packing), got {pack_length}")
        self.save_hyperparameters()
        self.mix = TaskMix(text_to_image=text_to_image, caption_dropout=caption_dropout, paraphrase=paraphrase,
                           normal_form=normal_form, rewriting=rewriting, answering=answering, verifying=verifying,
                           editing=editing)
        self.skips = SkipCounter("code-shard sample")

    def _model_text_side(self) -> tuple[Any, UnifiedVocabulary]:
        # Asked when loaders are built, i.e. after a resumed checkpoint restored the tokenizer.
        module = self.trainer.lightning_module
        return module.text_tokenizer, module.vocabulary

    def _collate(self, vocab: UnifiedVocabulary) -> partial:
        return partial(collate_examples, vocab=vocab, pack_length=self.pack_length)

    def setup(self, stage: str) -> None:
        _, vocab = self._model_text_side()
        for source in filter(None, (self.hparams.train_shards, self.hparams.val_shards)):
            check_codes(source, vocab)
        # Asked once, for the training and the validation loader alike.
        self.pack_length = self.hparams.pack_length
        if self.pack_length is not None and not packing_is_exact(self.trainer.lightning_module.model, vocab):
            rank_zero_warn("data.pack_length: this LM lets packed sequences attend to each other "
                           "(its attention mask ignores position_ids), so every sequence gets a row of its own")
            self.pack_length = None

    def train_dataloader(self) -> DataLoader:
        tokenizer, vocab = self._model_text_side()
        maker = ExampleMaker(tokenizer, vocab, self.mix, training=True, seed=self.hparams.seed)
        dataset = read_shards(
            self.hparams.train_shards, training=True, samples_per_epoch=self.hparams.samples_per_epoch,
            shuffle_buffer=self.hparams.shuffle_buffer, keep=has_caption, transform=maker,
            skip_counter=self.skips, seed=self.hparams.seed,
        )
        return DataLoader(
            dataset, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers,
            collate_fn=self._collate(vocab), persistent_workers=self.hparams.num_workers > 0,
        )

    def first_val_samples(self, count: int) -> list[dict[str, Any]]:
        """The first ``count`` validation samples validation reads (the captioned ones), decoded
        (``key``, ``caption``, ``codes``, ``meta``), in shard order: the same ones every time."""
        if not self.hparams.val_shards or count <= 0:
            return []
        return list(itertools.islice(filter(has_caption, iterate_samples(self.hparams.val_shards)), count))

    def val_dataloader(self) -> DataLoader:
        if not self.hparams.val_shards:
            return []
        tokenizer, vocab = self._model_text_side()
        maker = ExampleMaker(tokenizer, vocab, self.mix, training=False)
        dataset = read_shards(self.hparams.val_shards, training=False, keep=has_caption, transform=maker,
                              skip_counter=self.skips)
        if self.hparams.val_samples:
            dataset = dataset.slice(self.hparams.val_samples)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, collate_fn=self._collate(vocab))


def check_codes(source: str | list[str], vocab: UnifiedVocabulary) -> None:
    """Fail before training when the shards' code grid or range does not fit the vocabulary, or
    when no sample has a caption.

    Without this, the reader would drop every such sample (skipped as corrupt, or left out as
    uncaptioned) and the endless training stream would never yield a batch.
    """
    samples = iterate_samples(source)
    try:
        sample = next(samples)
    except StopIteration:
        raise UserError(f"no readable sample in {source}: the shards are empty, or every member was skipped as "
                        "corrupt (see the warnings above)") from None
    if "codes" not in sample:
        raise UserError(f"{source} holds image shards without codes.npy: make code shards with `unitok tokenize`")
    codes, meta = sample["codes"], sample["meta"]  # `unitok tokenize` records its tokenizer's geometry in meta
    codebook, grid = meta.get("codebook_size"), tuple(meta.get("grid_size", codes.shape[:2]))
    if codebook not in (None, vocab.codebook_size) or grid != vocab.grid:
        made = f"{codebook} codes on a {grid} grid" if codebook is not None else f"a {grid} code grid"
        raise UserError(f"the code shards {source} come from an image tokenizer with {made}, but the LM is built "
                        f"for {vocab.codebook_size} codes on a {vocab.grid} grid (model.image_tokenizer): tokenize "
                        "with the LM's image tokenizer, or build the LM for the one that made the shards")
    if tuple(codes.shape) != vocab.grid:
        raise UserError(f"codes in {source} have shape {tuple(codes.shape)}, the vocabulary expects {vocab.grid}")
    if codes.min() < 0 or codes.max() >= vocab.codebook_size:
        raise UserError(f"codes in {source} lie in [{codes.min()}, {codes.max()}], outside the vocabulary's "
                        f"{vocab.codebook_size} codes: use the image tokenizer the LM was built for")
    if not any(has_caption(s) for s in itertools.chain([sample], samples)):  # stops at the first caption
        raise UserError(f"no sample in {source} has a caption, and the LM learns from captions: pass "
                        "--captions to `unitok data folder` (images alone train only the image tokenizer)")
