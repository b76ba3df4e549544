"""``cifar5m``: the CIFAR-5M images (6 million synthetic CIFAR-10-like images) from local ``.npz`` parts.

The parts ``cifar5m_part0.npz`` … ``cifar5m_part5.npz`` (https://github.com/preetum/cifar5m)
each hold ``X``, uint8 images N×32×32×3, and ``Y``, N integer labels in [0, 10). A part is about
3 GB, so nothing reads the whole set: headers give the sizes, a part stored uncompressed
(``numpy.savez``) is memory-mapped (``specreach.data.npz_arrays``), a compressed one
(``numpy.savez_compressed``) is loaded whole when first needed, and at most two parts stay open.

Tasks (param ``task``):

- ``classification``: inputs float32 (3, 32, 32), RGB scaled to [0, 1]; targets the class, 10 classes.
- ``next-pixel``: the image in grayscale, 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601 luma) rounded
  half up, computed exactly in integers as (299 R + 587 G + 114 B + 500) // 1000, flattened row
  by row into 1024 tokens over a vocabulary of 256. The context is the 1023 pixels that have a
  successor: inputs = tokens[:-1], targets = tokens[1:], so T = 1023 (a model with a context of
  1024 takes it) and every pixel but the first is predicted; no start token is added, so the
  vocabulary stays 256.

Split: the validation pool is the last ``validation_size`` images of ``validation_part``; the
training stream is ``train_parts`` in part order without those images, capped to its first
``max_train_samples`` images if given. The epoch order is shuffled by blocks: the data seed
permutes the parts, then the images within each part, so a batch reads from at most two parts
(a uniform shuffle over all parts would read from every part in every batch).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from specreach.data.base import Batch, DataInfo, DataSource
from specreach.data.batching import batches_in_order, check_batch_request
from specreach.data.npz_arrays import NpzMember, npz_array, npz_member
from specreach.params.data import Cifar5mParams

IMAGE_SHAPE = (32, 32, 3)
CLASSES = 10
PIXEL_VOCAB = 256
LUMA_PER_MILLE = torch.tensor([299, 587, 114])  # integer weights: exact rounding, no float ties
PARTS_OPEN = 2  # a batch straddles at most two parts of the block-shuffled order
HOW_TO_GET = (
    "Expected the CIFAR-5M parts cifar5m_part0.npz … cifar5m_part5.npz (arrays X: N×32×32×3 uint8 images, "
    "Y: N integer labels in [0, 10)). Download them from https://github.com/preetum/cifar5m into that directory."
)


def part_file(directory: Path, part: int) -> Path:
    return directory / f"cifar5m_part{part}.npz"


class Cifar5m(DataSource):
    name = "cifar5m"
    Params = Cifar5mParams

    def __init__(self, **options):
        super().__init__(**options)
        self._open: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    # --- files -----------------------------------------------------------------------------

    def _path(self, part: int) -> Path:
        directory = self.params.directory
        if not directory.is_dir():
            raise FileNotFoundError(f"cifar5m: the directory {directory} does not exist. {HOW_TO_GET}")
        path = part_file(directory, part)
        if not path.is_file():
            raise FileNotFoundError(f"cifar5m: {path} not found. {HOW_TO_GET}")
        return path

    def _members(self, part: int) -> tuple[NpzMember, NpzMember]:
        """The checked headers of a part's X and Y (cheap: no image is read)."""
        path = self._path(part)
        images, labels = npz_member(path, "X"), npz_member(path, "Y")
        if images.dtype != np.uint8:
            raise ValueError(f"{path}: X has dtype {images.dtype}, expected uint8 pixels")
        if len(images.shape) != 4 or images.shape[1:] != IMAGE_SHAPE:
            raise ValueError(f"{path}: X has shape {images.shape}, expected (N, 32, 32, 3)")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"{path}: Y has dtype {labels.dtype}, expected integer class labels")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"{path}: Y has shape {labels.shape}, expected ({images.shape[0]},), one label per image")
        return images, labels

    @cached_property
    def _sizes(self) -> dict[int, int]:
        parts = dict.fromkeys((*self.params.train_parts, self.params.validation_part))
        return {part: self._members(part)[0].shape[0] for part in parts}

    def _arrays(self, part: int) -> tuple[np.ndarray, np.ndarray]:
        """X (memory-mapped or loaded) and Y (loaded, range-checked); the two latest parts stay open."""
        if part in self._open:
            self._open.move_to_end(part)
            return self._open[part]
        path = self._path(part)
        image_member, label_member = self._members(part)
        labels = np.asarray(npz_array(path, "Y", label_member))
        if len(labels) and (labels.min() < 0 or labels.max() >= CLASSES):
            raise ValueError(f"{path}: Y has labels in [{labels.min()}, {labels.max()}], expected [0, {CLASSES})")
        self._open[part] = npz_array(path, "X", image_member), labels.astype(np.int64)
        while len(self._open) > PARTS_OPEN:
            self._open.popitem(last=False)
        return self._open[part]

    # --- split -----------------------------------------------------------------------------

    @cached_property
    def _training_counts(self) -> list[tuple[int, int]]:
        """(part, images used for training): a prefix of each training part, in part order."""
        p = self.params
        sizes = self._sizes
        self._check_validation_part()
        remaining = p.max_train_samples if p.max_train_samples is not None else sum(sizes.values())
        counts = []
        for part in p.train_parts:
            available = sizes[part] - (p.validation_size if part == p.validation_part else 0)
            take = min(available, remaining)
            counts.append((part, take))
            remaining -= take
        counts = [(part, count) for part, count in counts if count > 0]
        if not counts:
            raise ValueError(f"cifar5m: no training image is left in parts {p.train_parts} after the validation pool")
        return counts

    def _check_validation_part(self) -> None:
        p = self.params
        size = self._sizes[p.validation_part]
        if size < p.validation_size:
            raise ValueError(
                f"cifar5m: part {p.validation_part} has {size} images, fewer than validation_size = {p.validation_size}"
            )

    def info(self) -> DataInfo:
        train_samples = sum(count for _, count in self._training_counts)
        if self.params.task == "classification":
            return DataInfo(task="classification", input_shape=(3, 32, 32), classes=CLASSES,
                            train_samples=train_samples)
        return DataInfo(task="next-token", input_shape=(1023,), vocab=PIXEL_VOCAB, train_samples=train_samples)

    # --- batches ---------------------------------------------------------------------------

    def _as_batch(self, images: np.ndarray, labels: np.ndarray) -> Batch:
        pixels = torch.from_numpy(np.array(images))  # a copy: the part's arrays are read-only or cached
        if self.params.task == "classification":
            return pixels.permute(0, 3, 1, 2).float().div(255.0).contiguous(), torch.from_numpy(np.array(labels))
        gray = ((pixels.long() @ LUMA_PER_MILLE + 500) // 1000).flatten(1)
        return gray[:, :-1].contiguous(), gray[:, 1:].contiguous()

    def validation_pool(self) -> Batch:
        self._check_validation_part()
        images, labels = self._arrays(self.params.validation_part)
        return self._as_batch(images[-self.params.validation_size:], labels[-self.params.validation_size:])

    def _fetch(self, rows: Tensor) -> Batch:
        """Images for (part, index-in-part) rows, in the rows' order."""
        parts, indices = rows[:, 0].numpy(), rows[:, 1].numpy()
        images = np.empty((len(rows), *IMAGE_SHAPE), dtype=np.uint8)
        labels = np.empty(len(rows), dtype=np.int64)
        for part in dict.fromkeys(parts.tolist()):
            mask = parts == part
            part_images, part_labels = self._arrays(part)
            images[mask], labels[mask] = part_images[indices[mask]], part_labels[indices[mask]]
        return self._as_batch(images, labels)

    def epoch_order(self, data_seed: int) -> Tensor:
        """(part, index) rows of one epoch: parts in a seeded order, each part's images shuffled."""
        generator = torch.Generator().manual_seed(data_seed)
        counts = self._training_counts
        blocks = []
        for position in torch.randperm(len(counts), generator=generator).tolist():
            part, count = counts[position]
            indices = torch.randperm(count, generator=generator)
            blocks.append(torch.stack([torch.full_like(indices, part), indices], dim=1))
        return torch.cat(blocks)

    def train_batches(self, batch_size: int, data_seed: int, start: int = 0) -> Iterator[Batch]:
        check_batch_request(batch_size, start)
        return batches_in_order(self.epoch_order(data_seed), batch_size, start, self._fetch)
