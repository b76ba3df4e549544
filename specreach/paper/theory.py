"""Predictions for the random-feature model at initialization (math page §6; paper Section 3.2).

At f = 0 with mean-squared error, g = −2y/n, so P = yᵀKy / (‖y‖² Tr K) for the student's kernel
K. Given the inputs, the teacher's labels are exactly Gaussian, y ~ N(0, K) (finite width:
K = ΦΦᵀ/M with the shared features; infinite width: the arc-cosine kernel), and centering them
makes y ~ N(0, HKH), H = I − 11ᵀ/n. With μ_k the eigenvalues of HKH and z ~ N(0, I):

    P = Σ_k μ_k² z_k² / (Σ_k μ_k z_k² · Tr K),   E[P] = E_z[…] (Monte Carlo over z)

— the expectation of the ratio, not the ratio of expectations, which overestimates it.
Standardizing the labels rescales y and leaves P unchanged.
"""

from __future__ import annotations

import math

import torch
from scipy.special import zeta
from torch import Tensor


def arccos_kernel(x: Tensor) -> Tensor:
    """E_w[φ(wᵀx) φ(wᵀx')] for w ~ N(0, I), φ(u) = sqrt(2)·max(0, u):
    (‖x‖‖x'‖/π)(sin θ + (π − θ) cos θ)."""
    x = x.double()
    norms = x.norm(dim=1)
    cosine = (x @ x.T) / torch.outer(norms, norms)
    theta = torch.arccos(cosine.clamp(-1.0, 1.0))
    return torch.outer(norms, norms) / math.pi * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta))


def finite_width_kernel(x: Tensor, weight: Tensor) -> Tensor:
    """K = ΦΦᵀ/M with Φ = φ(XWᵀ): the kernel of the student whose readout is the only θ."""
    features = math.sqrt(2.0) * torch.relu(x.double() @ weight.double().T)
    return features @ features.T / weight.shape[0]


def expected_position(kernel: Tensor, draws: int = 4000, seed: int = 0) -> float:
    """E_z[P] for centered Gaussian labels y ~ N(0, HKH), by Monte Carlo over z."""
    n = kernel.shape[0]
    centering = torch.eye(n, dtype=torch.float64) - 1.0 / n
    mu = torch.linalg.eigvalsh(centering @ kernel.double() @ centering).clamp(min=0)
    z2 = torch.randn(draws, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).square()
    ratios = (z2 @ mu.square()) / (z2 @ mu) / torch.trace(kernel.double())
    return float(ratios.mean())


def ratio_of_expectations(kernel: Tensor) -> float:
    """Tr (HK)² / (Tr HK · Tr K): the shortcut that overestimates E[P]."""
    n = kernel.shape[0]
    hk = (torch.eye(n, dtype=torch.float64) - 1.0 / n) @ kernel.double()
    return float(torch.trace(hk @ hk) / torch.trace(hk) / torch.trace(kernel.double()))


def power_law_asymptote(alpha: float) -> float:
    """¼ ζ(2α)/ζ(α)², from the linear term of the kernel's Hermite expansion: the scaling
    relation of P with α, not its value (α > 1)."""
    return 0.25 * float(zeta(2 * alpha)) / float(zeta(alpha)) ** 2
