"""``digits``: scikit-learn's 8×8 handwritten digits, a classification set that needs no download.

``sklearn.datasets.load_digits`` reads 1797 images shipped inside the scikit-learn package
(pixel values 0 … 16). Inputs are float32 (1, 8, 8) scaled to [0, 1] by dividing by 16;
targets are the digits 0 … 9. The split is fixed: the last ``validation_size`` images (in the
package's order) are the validation pool, the others the training set.

``task: next-pixel`` turns each image into a sequence of its 64 pixel levels (0 … 16, vocab 17,
row by row), inputs pixels 0 … 62 and targets 1 … 63: a miniature of CIFAR-5M's next-pixel task
that runs on a CPU.
"""

from __future__ import annotations

from functools import cached_property
from typing import Iterator

import torch
from torch import Tensor

from specreach.data.base import Batch, DataInfo, DataSource
from specreach.data.batching import batches_in_order, shuffled_order
from specreach.params.data import DIGITS_SAMPLES, DigitsParams

PIXEL_MAX = 16.0


class Digits(DataSource):
    name = "digits"
    Params = DigitsParams

    def info(self) -> DataInfo:
        train_samples = DIGITS_SAMPLES - self.params.validation_size
        if self.params.task == "next-pixel":
            return DataInfo(task="next-token", input_shape=(63,), vocab=17, train_samples=train_samples)
        return DataInfo(task="classification", input_shape=(1, 8, 8), classes=10, train_samples=train_samples)

    @cached_property
    def _all(self) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits  # slow to import: only when the data is needed

        digits = load_digits()
        if self.params.task == "next-pixel":
            levels = torch.from_numpy(digits.images).long().reshape(-1, 64)
            return levels[:, :-1].contiguous(), levels[:, 1:].contiguous()
        images = torch.from_numpy(digits.images).float().unsqueeze(1) / PIXEL_MAX
        return images, torch.from_numpy(digits.target).long()

    def _split(self, held_out: bool) -> Batch:
        images, labels = self._all
        boundary = len(images) - self.params.validation_size
        part = slice(boundary, None) if held_out else slice(None, boundary)
        return images[part], labels[part]

    def validation_pool(self) -> Batch:
        return self._split(held_out=True)

    def train_batches(self, batch_size: int, data_seed: int, start: int = 0) -> Iterator[Batch]:
        images, labels = self._split(held_out=False)
        order = shuffled_order(len(images), data_seed)
        return batches_in_order(order, batch_size, start, lambda indices: (images[indices], labels[indices]))
