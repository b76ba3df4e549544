"""The random-feature model of the paper's Section 3.2 (math page §6).

f(x) = (1/sqrt(M)) Σ_j a_j φ(w_jᵀx), φ(u) = sqrt(2)·max(0, u) (variance preserving), with the
first layer W ∈ R^{M×D} frozen at N(0, 1) entries and the readout a trainable, zero-initialized.
The power-law teacher (``specreach.data``) uses the same W, drawn by :func:`feature_matrix`
from the same seed, so that the teacher lies in the student's RKHS.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def feature_matrix(inputs: int, features: int, seed: int) -> Tensor:
    """W ∈ R^{features × inputs}, N(0, 1) entries, a pure function of the seed (float32)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(features, inputs, generator=generator)


def relu_features(x: Tensor, weight: Tensor) -> Tensor:
    """φ(W x) with φ(u) = sqrt(2)·max(0, u)."""
    return math.sqrt(2.0) * F.relu(x @ weight.T)


class RandomFeatureModel(nn.Module):
    def __init__(self, inputs: int, features: int, feature_seed: int):
        super().__init__()
        self.projection = nn.Linear(inputs, features, bias=False)  # W
        self.projection.weight.data.copy_(feature_matrix(inputs, features, feature_seed))
        self.projection.weight.requires_grad_(False)  # frozen: not part of θ
        self.readout = nn.Linear(features, 1, bias=False)
        nn.init.zeros_(self.readout.weight)
        self.readout_scale = 1.0 / math.sqrt(features)

    def representation(self, x: Tensor) -> Tensor:
        """φ(Wx): the frozen features (a linear probe trains on these, as the readout does)."""
        return math.sqrt(2.0) * F.relu(self.projection(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.representation(x) * self.readout_scale)
