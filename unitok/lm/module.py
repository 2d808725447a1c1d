"""The LightningModule that trains the unified LM (research code only: model, loss, metrics).

Devices, precision, DDP and checkpointing are the Trainer's and are chosen in the YAML configs.
The checkpoint carries everything an export needs (HF config, tokenizer files, vocabulary), so
``unitok lm export CKPT OUT_DIR`` needs neither the training data nor the hub.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoTokenizer

from tokenizer.model import VQTokenizer
from unitok.callbacks import SaveFinalCheckpoint
from unitok.errors import UserError
from unitok.lm.data import caption_texts
from unitok.lm.image_positions import attach_image_positions, lm_forward
from unitok.lm.lora import LoraSettings, apply_lora, trainable_summary
from unitok.lm.model import ScratchConfig, build_pretrained_lm, build_scratch_lm
from unitok.lm.sequences import IGNORE, TASKS, next_token_losses
from unitok.lm.text_tokenizer import train_bpe_tokenizer
from unitok.schedules import warmup_cosine_factor
from unitok.vocabulary import UnifiedVocabulary

CHECKPOINT_KEY = "unitok"


# A sequence around one image: [bos] caption <|boi|> codes <|eoi|> [eos], with a caption of at least this many tokens.
MIN_CAPTION_TOKENS = 8


def check_context_holds_an_image(max_positions: int, grid: tuple[int, int]) -> None:
    """Refuse, before anything trains, a from-scratch LM too short to draw one image with a caption
    (it would train on cut sequences, and the pipeline would refuse every prompt)."""
    needed = grid[0] * grid[1] + 4 + MIN_CAPTION_TOKENS
    if max_positions < needed:
        raise UserError(f"model.scratch.max_positions is {max_positions}, too short for one image of "
                        f"{grid[0]}x{grid[1]} = {grid[0] * grid[1]} codes, its 4 markers and a caption: "
                        f"set it to at least {needed} (captions longer than {MIN_CAPTION_TOKENS} tokens need more)")


def image_geometry(
    image_tokenizer: str | None, codebook_size: int | None, grid: tuple[int, int] | None
) -> tuple[int, tuple[int, int]]:
    """Codebook size and grid: from the image tokenizer's folder, or given; never contradictory."""
    if image_tokenizer is not None:
        try:
            vq = VQTokenizer.from_pretrained(image_tokenizer)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load the image tokenizer {image_tokenizer!r}: {error}") from error
        given, found = (codebook_size, grid and tuple(grid)), (vq.codebook_size, tuple(vq.grid_size))
        if any(g is not None and g != f for g, f in zip(given, found, strict=True)):
            raise UserError(f"model.codebook_size/grid {given} contradict the image tokenizer's {found}: "
                            "drop them or use the matching tokenizer")
        return found
    if codebook_size is None or grid is None:
        raise UserError("give model.image_tokenizer (its export folder), or both model.codebook_size and model.grid")
    return codebook_size, tuple(grid)


class UnifiedLMModule(L.LightningModule):
    """A causal LM over ``[text | specials | image codes]`` trained on every task in ``TASKS`` at once.

    Args:
        pretrained: HF causal LM (hub id or folder) to extend; None builds a Llama from scratch.
        text_tokenizer: tokenizer to use with ``pretrained`` (default: the model's own).
        scratch: size of the from-scratch Llama (used when ``pretrained`` is None).
        tokenizer_captions: code shards whose captions train the from-scratch BPE
            (the CLI links it to ``data.train_shards``).
        bpe_vocab_size: size of that BPE's vocabulary.
        bpe_max_samples: read at most this many samples' captions to train it.
        image_tokenizer: exported image tokenizer folder (gives codebook size and grid).
        codebook_size, grid: the same, given directly (checked against ``image_tokenizer``).
        learning_rate, min_lr_ratio, warmup_steps: linear warmup, then cosine to lr * min_lr_ratio by
            the last step or by the end of ``trainer.max_time``, whichever comes first.
        weight_decay, betas: AdamW (no decay on norms and biases).
        seed: seed of the new embedding rows of a pretrained LM.
        image_positions: give the LM a learned grid-cell embedding for image codes
            (``unitok.lm.image_positions``); an LM loaded with one keeps it either way.
        lora: train LoRA adapters and the new embedding rows only, the ``pretrained`` base frozen
            (``unitok.lm.lora``), e.g. ``{r: 8, alpha: 16, dropout: 0.0, target_modules: all-linear}``.
        task_weights: relative weight of each task's sequences in the loss, e.g.
            ``{text_to_image: 8, editing: 4}`` (a task left out weighs 1). A sequence's loss is the
            mean over its targets, so an image's few codes that decide a scene (where an object
            starts, its colour and shape) are diluted by its many easy ones; a weight puts them
            back on the scale of a short answer without drawing fewer samples of other tasks.
        val_previews: at the end of each validation (not the sanity check), the LM draws the
            captions of the first N captioned validation samples and captions their codes, the same
            samples and seeds every time; ``RUN/samples/step_{step:06d}.jsonl`` gets each sample's
            reference and the model's caption, ``.png`` the samples' images (top row) above the
            drawings (bottom row), the latter only with ``image_tokenizer`` (its decoder renders
            codes). Written by ``unitok lm fit|validate`` (``unitok.evaluation.val_previews``) on
            the first rank; 0 turns it off.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        text_tokenizer: str | None = None,
        scratch: ScratchConfig | dict | None = None,
        tokenizer_captions: str | None = None,
        bpe_vocab_size: int = 384,
        bpe_max_samples: int | None = 50_000,
        image_tokenizer: str | None = None,
        codebook_size: int | None = None,
        grid: tuple[int, int] | None = None,
        learning_rate: float = 1e-3,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 200,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        seed: int = 0,
        image_positions: bool = False,
        lora: LoraSettings | dict | None = None,
        task_weights: dict[str, float] | None = None,
        val_previews: int = 4,
    ):
        super().__init__()
        # Stored as a plain dict so checkpoints load with torch.load(weights_only=True).
        scratch = ScratchConfig(**scratch) if isinstance(scratch, dict) else scratch or ScratchConfig()
        lora = LoraSettings(**lora) if isinstance(lora, dict) else lora
        if lora is not None and pretrained is None:
            raise UserError("model.lora trains adapters on a pretrained LM: set model.pretrained (a hub id or folder), "
                            "or drop model.lora to train a model from scratch")
        if val_previews < 0:
            raise UserError(f"model.val_previews must be >= 0 (0: no previews), got {val_previews}")
        # A buffer, so the Trainer moves it with the model (not per step); not persistent, so the
        # weights come from the config a run is started or resumed with, as every hyperparameter does.
        self.register_buffer("task_weight_table", task_weight_table(task_weights), persistent=False)
        self.save_hyperparameters(ignore=["scratch", "lora"])
        self.hparams["scratch"] = asdict(scratch)
        self.hparams["lora"] = None if lora is None else asdict(lora)
        codebook_size, grid = image_geometry(image_tokenizer, codebook_size, grid)
        if pretrained is not None:
            self.model, self.text_tokenizer, self.vocabulary = build_pretrained_lm(
                pretrained, codebook_size, grid, text_tokenizer=text_tokenizer, seed=seed)
        else:
            check_context_holds_an_image(scratch.max_positions, grid)
            if tokenizer_captions is None:
                raise UserError("a from-scratch LM trains its BPE on captions: set model.tokenizer_captions "
                                "(or data.train_shards), or give model.pretrained")
            self.text_tokenizer = train_bpe_tokenizer(caption_texts(tokenizer_captions, bpe_max_samples), bpe_vocab_size)
            self.model, self.vocabulary = build_scratch_lm(
                self.text_tokenizer, codebook_size, grid, scratch)
        if image_positions:
            attach_image_positions(self.model, self.vocabulary)
        if lora is not None:
            apply_lora(self.model, self.vocabulary, lora)

    def on_fit_start(self) -> None:
        if self.hparams.lora is not None:
            rank_zero_info(trainable_summary(self.model))

    # -- loss and metrics ----------------------------------------------------------------------
    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        # A packed batch (``collate(pack_length=...)``) has position_ids and no attention_mask; without a
        # KV cache, transformers keeps each of its sequences to itself.
        logits = lm_forward(self.model, self.vocabulary, batch["input_ids"], attention_mask=batch.get("attention_mask"),
                            position_ids=batch.get("position_ids"), use_cache=False).logits
        token_loss, targets = next_token_losses(logits, batch["labels"])
        predicted = logits[:, :-1].argmax(-1)
        counted = targets != IGNORE
        task_of, sequence_of = batch["task"][:, 1:], batch["sequence"][:, 1:]  # of each target
        batch_size = int(batch["sequence"].max()) + 1  # sequences, however many rows they fill
        on_step = stage == "train"
        for index, task in enumerate(TASKS):
            rows = counted & (task_of == index)
            if rows.any():
                self.log(f"{stage}/loss_{task}", token_loss[rows].mean(), batch_size=batch_size,
                         on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        # One mean per sequence, then a mean over sequences weighted by their task's weight (1 unless
        # model.task_weights says otherwise): a sequence weighs the same whether it has 65 target
        # ids (an image) or one (a verdict), so the task mix and the weights set how much each counts.
        sequences = sequence_of[counted]
        targets_per_sequence = torch.bincount(sequences, minlength=batch_size)
        loss_per_sequence = torch.zeros(batch_size, device=token_loss.device).index_add_(0, sequences, token_loss[counted])
        task_per_sequence = torch.zeros(batch_size, dtype=torch.long, device=token_loss.device)
        task_per_sequence[sequences] = task_of[counted]
        weight = self.task_weight_table[task_per_sequence]
        has_targets = (targets_per_sequence > 0) & (weight > 0)
        mean_per_sequence = loss_per_sequence[has_targets] / targets_per_sequence[has_targets]
        loss = ((mean_per_sequence * weight[has_targets]).sum() / weight[has_targets].sum() if has_targets.any()
                else token_loss.sum() * 0.0)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch_size, on_step=on_step, on_epoch=not on_step,
                 sync_dist=not on_step)
        for task, metric in (("text_to_image", "image_token_acc"), ("editing", "edit_token_acc")):
            is_image = counted & (targets >= self.vocabulary.image_offset) & (task_of == TASKS.index(task))
            if is_image.any():
                correct = (predicted == targets)[is_image].float().mean()
                self.log(f"{stage}/{metric}", correct, prog_bar=stage == "val" and task == "text_to_image",
                         batch_size=batch_size, on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        for task, metric in (("captioning", "caption_token_acc"), ("rewriting", "rewrite_token_acc"),
                             ("answering", "answer_token_acc"), ("verifying", "verdict_acc")):
            is_text = counted & (task_of == TASKS.index(task))
            if is_text.any():
                correct = (predicted == targets)[is_text].float().mean()
                self.log(f"{stage}/{metric}", correct, batch_size=batch_size,
                         on_step=on_step, on_epoch=not on_step, sync_dist=not on_step)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    # -- optimisation --------------------------------------------------------------------------
    def configure_callbacks(self) -> list[L.Callback]:
        return [SaveFinalCheckpoint()]

    def configure_optimizers(self) -> dict[str, Any]:
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.learning_rate, betas=tuple(self.hparams.betas),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _lr_factor(self, step: int) -> float:
        return warmup_cosine_factor(step, self.trainer, self.hparams.warmup_steps, self.hparams.min_lr_ratio)

    # -- checkpoint: everything an export needs ----------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "hf_config": self.model.config.to_json_string(use_diff=False),
            "generation_config": self.model.generation_config.to_json_string(use_diff=False),
            "tokenizer_files": tokenizer_files(self.text_tokenizer),
            "vocabulary": self.vocabulary.to_dict(),
        }
        if self.hparams.lora is not None:  # the adapters' settings and base, for `unitok lm export`
            checkpoint[CHECKPOINT_KEY]["lora"] = {"settings": self.hparams.lora, "base": self.hparams.pretrained}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = UnifiedVocabulary.from_dict(checkpoint[CHECKPOINT_KEY]["vocabulary"])
        if stored != self.vocabulary:
            raise UserError(f"checkpoint vocabulary {stored} differs from the one built from this config "
                            f"{self.vocabulary}: resume with the config the checkpoint was trained with")
        # Same layout; take the checkpoint's exact tokenizer (a re-trained BPE could differ in merges).
        self.text_tokenizer = restore_tokenizer(checkpoint[CHECKPOINT_KEY]["tokenizer_files"])


def task_weight_table(task_weights: dict[str, float] | None) -> torch.Tensor:
    """Each task's loss weight, indexed like ``TASKS`` (1 for a task ``task_weights`` leaves out)."""
    task_weights = dict(task_weights or {})
    unknown = sorted(set(task_weights) - set(TASKS))
    if unknown:
        raise UserError(f"model.task_weights names no such task {unknown}: the tasks are {', '.join(TASKS)}")
    bad = {task: weight for task, weight in task_weights.items()
           if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0}
    if bad:
        raise UserError(f"model.task_weights must be finite numbers >= 0 (0 leaves a task out of the loss), got {bad}")
    return torch.tensor([float(task_weights.get(task, 1.0)) for task in TASKS])


def tokenizer_files(tokenizer) -> dict[str, str]:
    """The tokenizer's saved files as text, so a checkpoint is self-contained."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return {path.name: path.read_text() for path in Path(tmp).iterdir() if path.is_file()}


def restore_tokenizer(files: dict[str, str]):
    """The tokenizer saved by ``tokenizer_files``."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text)
        return AutoTokenizer.from_pretrained(tmp)
