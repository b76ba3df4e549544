"""``powerlaw-teacher``: Gaussian inputs with a power-law spectrum, labelled by a random-feature teacher.

Inputs x = sqrt(λ) ⊙ z with z ~ N(0, I_D) and λ_k ∝ k^(−α), k = 1 … D, normalized so Σ λ_k = 1
(the input covariance is diag(λ), of trace 1). Labels come from a teacher that shares the
student's frozen features (the random-feature model of ``specreach.models.random_features``,
built with the same ``feature_seed``), so the teacher lies in the student's RKHS:

    y_raw(x) = (1/sqrt(M)) Σ_j a*_j φ(w_jᵀx),  φ(u) = sqrt(2)·max(0, u),
    W = feature_matrix(inputs=D, features=M, seed=feature_seed),  a* ~ N(0, I_M) from ``teacher_seed``.

Labels are standardized with the statistics of the finite training set: y = (y_raw − μ)/σ,
where μ is the mean of y_raw over the ``train_size`` training inputs and σ their population
standard deviation (divisor ``train_size``, not ``train_size − 1``), so the training labels have
mean 0 and variance 1 exactly (up to rounding); the validation labels use the same μ and σ.

The training set is drawn from a generator keyed by (``sample_seed``, 0) and the validation pool
from one keyed by (``sample_seed``, 1): independent streams, so the pool does not depend on
``train_size`` and shares no sample with the training set (continuous draws). The paper measures
at initialization on the full training set: ``train_batches(train_size, …)`` yields it as one
batch, and :meth:`PowerlawTeacher.training_set` returns it in its fixed order.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from specreach.data.base import Batch, DataInfo, DataSource
from specreach.data.batching import batches_in_order, shuffled_order
from specreach.models.random_features import feature_matrix, relu_features
from specreach.params.data import PowerlawTeacherParams

TRAIN_STREAM, VALIDATION_STREAM = 0, 1
LABEL_CHUNK = 4096  # rows per feature evaluation: bounds memory at LABEL_CHUNK × M floats


def powerlaw_spectrum(inputs: int, alpha: float) -> Tensor:
    """λ_k = k^(−α) / Σ_j j^(−α), k = 1 … inputs (float64)."""
    powers = torch.arange(1, inputs + 1, dtype=torch.float64) ** (-alpha)
    return powers / powers.sum()


def stream_generator(sample_seed: int, stream: int) -> torch.Generator:
    """A generator for one split, independent of the other split's (SeedSequence mixing)."""
    seed = int(np.random.SeedSequence([sample_seed, stream]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


class PowerlawTeacher(DataSource):
    name = "powerlaw-teacher"
    Params = PowerlawTeacherParams

    def info(self) -> DataInfo:
        return DataInfo(task="regression", input_shape=(self.params.inputs,), train_samples=self.params.train_size)

    def spectrum(self) -> Tensor:
        return powerlaw_spectrum(self.params.inputs, self.params.alpha)

    def teacher_coefficients(self) -> Tensor:
        """a* ∈ R^M, N(0, 1) entries from ``teacher_seed`` (float32)."""
        return torch.randn(self.params.features, generator=torch.Generator().manual_seed(self.params.teacher_seed))

    def draw_inputs(self, count: int, stream: int) -> Tensor:
        z = torch.randn(count, self.params.inputs, generator=stream_generator(self.params.sample_seed, stream))
        return z * self.spectrum().sqrt().float()

    def raw_labels(self, x: Tensor) -> Tensor:
        """y_raw = (1/sqrt(M)) φ(W x)·a*, accumulated in float64 (shape (N,))."""
        p = self.params
        weight = feature_matrix(inputs=p.inputs, features=p.features, seed=p.feature_seed)
        coefficients = self.teacher_coefficients().double()
        chunks = [relu_features(rows, weight).double() @ coefficients for rows in x.split(LABEL_CHUNK)]
        return torch.cat(chunks) / math.sqrt(p.features)

    @cached_property
    def _training(self) -> tuple[Tensor, Tensor, float, float]:
        x = self.draw_inputs(self.params.train_size, TRAIN_STREAM)
        raw = self.raw_labels(x)
        mean, std = raw.mean().item(), raw.std(correction=0).item()
        return x, self._standardized(raw, mean, std), mean, std

    @staticmethod
    def _standardized(raw: Tensor, mean: float, std: float) -> Tensor:
        return ((raw - mean) / std).float().unsqueeze(1)

    def label_statistics(self) -> tuple[float, float]:
        """(μ, σ) of the raw teacher outputs over the training set, used to standardize all labels."""
        _, _, mean, std = self._training
        return mean, std

    def training_set(self) -> Batch:
        """The whole training set in its fixed (seed-independent) order: x (N, D), y (N, 1)."""
        x, y, _, _ = self._training
        return x, y

    def validation_pool(self) -> Batch:
        x = self.draw_inputs(self.params.validation_size, VALIDATION_STREAM)
        mean, std = self.label_statistics()
        return x, self._standardized(self.raw_labels(x), mean, std)

    def train_batches(self, batch_size: int, data_seed: int, start: int = 0) -> Iterator[Batch]:
        x, y = self.training_set()
        order = shuffled_order(len(x), data_seed)
        return batches_in_order(order, batch_size, start, lambda indices: (x[indices], y[indices]))
