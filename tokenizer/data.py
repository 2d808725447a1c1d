"""The tokenizer's LightningDataModule: image shards -> batches of ``[B, 3, S, S]`` in [-1, 1].

Reading goes through ``unitok.data.shards.read_shards`` (the shared reader: DDP-safe resampled
training stream, full validation pass on every rank, corrupt members skipped and counted).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tokenizer.images import array_to_tensor, square_resize
from unitok.data.shards import SkipCounter, iterate_samples, read_shards
from unitok.errors import UserError


class ImageTransform:
    """Decoded sample -> image tensor, or (input, target) tensors when ``target_view`` names an
    extra image of the sample (e.g. ``clean``: the canonical render a degraded file should
    reconstruct to).

    The one rule for the scale the tokenizer sees: its view of an H×W image is a square of side
    min(H, W), resized to ``image_size`` by ``square_resize`` (antialiased). ``fit`` takes the
    central square; that is what ``unitok tokenize`` encodes for the LM, and what validation,
    evaluation and statistics see. Training with ``random_crop`` takes the same square at a random
    place along the longer side, mirrored half the time (the same for input and target). Neither
    changes the scale, so an object has as many pixels in a training image as in the codes the LM
    learns from (zooming crops would teach the tokenizer a scale the LM never sees). Shapes shards,
    and photos written by ``unitok data folder --size <image_size>``, are already ``image_size``
    square: they reach the model unresized, and ``random_crop`` only mirrors them.
    """

    def __init__(self, image_size: int, random_crop: bool, seed: int = 0, target_view: str | None = None):
        self.image_size, self.random_crop = image_size, random_crop
        self.seed, self.target_view, self._rng, self._rng_worker = seed, target_view, None, None

    def _generator(self) -> np.random.Generator:
        """One generator per loader worker: forked copies of one generator would crop alike."""
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else -1
        if self._rng is None or self._rng_worker != worker:
            self._rng, self._rng_worker = np.random.default_rng([self.seed, worker + 1]), worker
        return self._rng

    def __call__(self, sample: dict[str, Any]) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if "image" not in sample:
            raise ValueError(f"sample {sample['key']!r} has no image member")
        views = [sample["image"]]
        if self.target_view is not None:
            views.append(sample["images"].get(self.target_view, sample["image"]))
        if self.random_crop:
            views = self._random_square(views)
        tensors = [array_to_tensor(self.fit(v)) for v in views]
        return tensors[0] if len(tensors) == 1 else tuple(tensors)

    def _random_square(self, views: list[np.ndarray]) -> list[np.ndarray]:
        """The square ``fit`` would take (side min(H, W)), moved to a random place and mirrored
        half the time: the same for every view."""
        rng = self._generator()
        height, width = views[0].shape[:2]
        side = min(height, width)
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        squares = [v[top:top + side, left:left + side] for v in views]
        return [square[:, ::-1] for square in squares] if rng.random() < 0.5 else squares

    def fit(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels``' central square at the model's image size (antialiased; unchanged when it is
        already that size): the tokenizer's view of an image."""
        if pixels.shape[:2] == (self.image_size, self.image_size):
            return pixels
        return np.asarray(square_resize(Image.fromarray(np.ascontiguousarray(pixels)), self.image_size))


def check_images(source: str) -> None:
    """Fail before training unless the first readable sample of ``source`` has an image.

    Why: the training stream is endless and skips what it cannot read, so over shards that are
    all corrupt, empty or code shards it would search forever without a word.
    """
    sample = next(iterate_samples(source), None)
    if sample is None:
        raise UserError(f"no readable sample in {source}: the shards are empty, or every member was skipped as "
                        "corrupt (see the warnings above)")
    if "image" not in sample:
        raise UserError(f"{source} holds code shards; the image tokenizer trains on image shards (`unitok data`)")


def stack_batch(items: list) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Images -> one tensor; (input, target) pairs -> a pair of tensors."""
    if isinstance(items[0], tuple):
        return tuple(torch.stack(column) for column in zip(*items, strict=True))
    return torch.stack(items)


class TokenizerDataModule(L.LightningDataModule):
    """Train and validation image shards for the tokenizer.

    Args:
        train_shards: folder, glob or brace pattern of training ``.tar`` shards.
        val_shards: the same for validation (read in full, in order, on every rank).
        image_size: side of the square images fed to the model: the model's ``image_size``, which
            ``unitok tokenize`` uses too (a different one is refused when training starts).
        batch_size: images per batch per device.
        samples_per_epoch: length of one training "epoch" of the endless resampled stream.
        num_workers: DataLoader worker processes.
        random_crop: training squares at a random place along the longer side, mirrored half the
            time, at the scale ``unitok tokenize`` sees (``ImageTransform``); photos. Off for Shapes,
            whose layout (cells, positions, left and right) is the content.
        val_samples: cap on validation images (None: the whole validation set).
        target_view: an extra image member the model reconstructs instead of its input (``clean``:
            denoising, for shards that carry a clean render beside a degraded file).
        shuffle_buffer: in-memory shuffle buffer of the training stream.
        seed: seed of the stream shuffle and of the crops.
    """

    def __init__(
        self,
        train_shards: str = "data/shapes/train",
        val_shards: str = "data/shapes/val",
        image_size: int = 64,
        batch_size: int = 32,
        samples_per_epoch: int = 16000,
        num_workers: int = 1,
        random_crop: bool = False,
        val_samples: int | None = None,
        shuffle_buffer: int = 2000,
        seed: int = 0,
        target_view: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.skipped = SkipCounter("shard member")

    def setup(self, stage: str) -> None:
        self._check_image_size()
        if stage == "fit":
            check_images(self.hparams.train_shards)

    def _check_image_size(self) -> None:
        """Refuse images of another size than the model's: ``unitok tokenize`` brings images to the
        model's size, so the tokenizer would learn objects at another scale than the LM sees."""
        tokenizer = getattr(self.trainer.lightning_module, "tokenizer", None) if self.trainer else None
        expected = getattr(tokenizer, "image_size", None)
        if expected is not None and expected != self.hparams.image_size:
            raise UserError(f"data.image_size is {self.hparams.image_size} but the tokenizer's image_size is "
                            f"{expected}; `unitok tokenize` encodes images at {expected} px, so train at the "
                            f"same size: set data.image_size to {expected}")

    def train_dataloader(self) -> DataLoader:
        h = self.hparams
        dataset = read_shards(
            h.train_shards, training=True, samples_per_epoch=h.samples_per_epoch, shuffle_buffer=h.shuffle_buffer,
            transform=ImageTransform(h.image_size, h.random_crop, seed=h.seed, target_view=h.target_view),
            skip_counter=self.skipped, seed=h.seed,
        ).batched(h.batch_size, collation_fn=stack_batch, partial=False)
        return self._loader(dataset)

    def val_dataloader(self) -> DataLoader:
        h = self.hparams
        dataset = read_shards(
            h.val_shards, training=False,
            transform=ImageTransform(h.image_size, random_crop=False, target_view=h.target_view),
            skip_counter=self.skipped,
        )
        if h.val_samples:
            dataset = dataset.slice(h.val_samples)
        return self._loader(dataset.batched(h.batch_size, collation_fn=stack_batch, partial=True))

    def _loader(self, dataset) -> DataLoader:
        # Batching happens in the webdataset pipeline (workers collate), so batch_size=None here.
        workers = self.hparams.num_workers
        return DataLoader(dataset, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
