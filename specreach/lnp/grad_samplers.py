"""Per-sample gradient rules specreach writes itself, for layers Opacus has none for.

Each has Opacus's grad-sampler signature, ``(layer, activations, backprops) -> {parameter: per-sample
gradients}``, with the batch (or the batch flattened into rows) first, and is proven against plain
autograd per configuration it claims in ``tests/test_layer_rules.py``.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def batch_norm(layer: nn.modules.batchnorm._BatchNorm, activations: list[Tensor], backprops: Tensor) -> dict:
    """BatchNorm on its running statistics (eval mode): y = x̂ ⊙ γ + β with x̂ = (x − μ)/√(σ² + ε) over
    the channel dim 1; per sample Σ_spatial g ⊙ x̂ for γ and Σ_spatial g for β."""
    x = activations[0].to(backprops.dtype)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    assert layer.running_mean is not None and layer.running_var is not None
    normalized = (x - layer.running_mean.view(shape)) * torch.rsqrt(layer.running_var.view(shape) + layer.eps)
    spatial = list(range(2, x.dim()))
    grads = {}
    if layer.weight is not None and layer.weight.requires_grad:
        grads[layer.weight] = (normalized * backprops).sum(spatial) if spatial else normalized * backprops
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = backprops.sum(spatial) if spatial else backprops
    return grads


def transposed_linear(layer: nn.Module, activations: list[Tensor], backprops: Tensor) -> dict:
    """y = x W + b with W of shape (in, out) (Hugging Face's ``Conv1D``): per sample Σ_t x_t g_tᵀ and Σ_t g_t."""
    weight, bias = cast(Tensor, layer.weight), getattr(layer, "bias", None)
    n = backprops.shape[0]
    inputs = activations[0].reshape(n, -1, weight.shape[0]).to(backprops.dtype)
    g = backprops.reshape(n, -1, weight.shape[1])
    grads = {}
    if weight.requires_grad:
        grads[weight] = torch.bmm(inputs.transpose(1, 2), g)
    if bias is not None and bias.requires_grad:
        grads[bias] = g.sum(dim=1)
    return grads


def channels_first_layer_norm(layer: nn.LayerNorm, activations: list[Tensor], backprops: Tensor) -> dict:
    """LayerNorm over the channel dim 1 of (n, C, *spatial) inputs (timm's ``LayerNorm2d``): per sample
    Σ_spatial g ⊙ x̂ and Σ_spatial g, with x̂ normalized over the channels."""
    n = backprops.shape[0]
    x = activations[0].to(backprops.dtype).movedim(1, -1)
    g = backprops.movedim(1, -1)
    normalized = F.layer_norm(x, layer.normalized_shape, eps=layer.eps)
    channels = x.shape[-1]
    grads = {}
    if layer.weight is not None and layer.weight.requires_grad:
        grads[layer.weight] = (normalized * g).reshape(n, -1, channels).sum(dim=1)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = g.reshape(n, -1, channels).sum(dim=1)
    return grads
