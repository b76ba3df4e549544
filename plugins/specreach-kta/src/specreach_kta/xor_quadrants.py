"""``xor-quadrants``: noisy images whose class is an XOR, so no linear model of the pixels can learn it.

Each image is (1, S, S) with S = ``image_size`` (even). Two fair bits pick a column half
(a: left or right) and a row half (b: top or bottom); the image is

    x[r, c] = (v_b(r) + h_a(c)) / 2 + noise · ε[r, c],   ε ~ N(0, 1),

with h_a(c) = +1 on the chosen column half and −1 on the other (v_b likewise on rows). So one
quadrant is +1, the opposite one −1 and the other two 0, before the noise. The label is
a XOR b: class 1 when the bright quadrant lies on the anti-diagonal (top-right or bottom-left),
class 0 on the diagonal. Both classes have mean image zero, so a linear classifier of the pixels
stays at chance, while a small network separates them.

The training set comes from a generator keyed by (``sample_seed``, 0) and the validation pool
from one keyed by (``sample_seed``, 1): independent streams, so the pool does not depend on
``train_size``, and with ``noise`` > 0 (continuous draws) it shares no image with the training
set. The training order depends only on ``data_seed``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Iterator

import numpy as np
import torch

from specreach.data.base import Batch, DataInfo, DataSource
from specreach_kta.params import XorQuadrantsParams
from specreach.data.batching import batches_in_order, shuffled_order

TRAIN_STREAM, VALIDATION_STREAM = 0, 1


def stream_generator(sample_seed: int, stream: int) -> torch.Generator:
    """A generator for one split, independent of the other split's (SeedSequence mixing)."""
    seed = int(np.random.SeedSequence([sample_seed, stream]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def xor_quadrant_images(count: int, image_size: int, noise: float, generator: torch.Generator) -> Batch:
    """``count`` images (count, 1, S, S) float32 and their labels a XOR b (count,) int64."""
    column_bit = torch.randint(0, 2, (count,), generator=generator).bool()
    row_bit = torch.randint(0, 2, (count,), generator=generator).bool()
    first_half = torch.arange(image_size) < image_size // 2
    columns = torch.where(first_half == column_bit[:, None], 1.0, -1.0)  # (count, S): h_a(c)
    rows = torch.where(first_half == row_bit[:, None], 1.0, -1.0)  # (count, S): v_b(r)
    clean = (rows[:, :, None] + columns[:, None, :]) / 2
    images = clean + noise * torch.randn(count, image_size, image_size, generator=generator)
    return images.unsqueeze(1), (column_bit ^ row_bit).long()


class XorQuadrants(DataSource):
    """Noisy (1, S, S) images; the class is the XOR of which column half and which row half is bright."""

    name = "xor-quadrants"
    Params = XorQuadrantsParams

    def info(self) -> DataInfo:
        side = self.params.image_size
        return DataInfo(task="classification", input_shape=(1, side, side), classes=2,
                        train_samples=self.params.train_size)

    def _draw(self, count: int, stream: int) -> Batch:
        p = self.params
        return xor_quadrant_images(count, p.image_size, p.noise, stream_generator(p.sample_seed, stream))

    @cached_property
    def _training(self) -> Batch:
        return self._draw(self.params.train_size, TRAIN_STREAM)

    def validation_pool(self) -> Batch:
        return self._draw(self.params.validation_size, VALIDATION_STREAM)

    def train_batches(self, batch_size: int, data_seed: int, start: int = 0) -> Iterator[Batch]:
        images, labels = self._training
        order = shuffled_order(len(images), data_seed)
        return batches_in_order(order, batch_size, start, lambda indices: (images[indices], labels[indices]))
