"""The closed-form share of a linear readout, and probes drawn in its input space.

When the model's output comes straight from a linear layer, f_t = W (c·a_t) + b at each
position t, that layer's own share of χ_net needs no probe: ∂f_{t,v}/∂W = e_v (c·a_t)ᵀ, so per
sample Σ_{t,v} ‖·‖² = d_out Σ_t ‖c·a_t‖², and the bias adds d_out per position. Below it, a
probe r on the outputs reaches the readout's input as u_t = c·Wᵀr_t with E[u_t u_tᵀ] = c² WᵀW;
drawing u_t = c·S z_t with S Sᵀ = WᵀW and z over d_in coordinates gives the same expectation for
every parameter below. For a language model's head (d_in = hidden ≪ d_out = vocabulary) this
removes the largest backward and the largest per-sample norm from every probe.

Positions whose targets the loss ignores are not part of f (``lnp-math.md`` §8): ``mask``
(per sample and position, 1 = counted) leaves them out of the closed form as well.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from specreach.lnp.layer_rules import input_scale
from specreach.lnp.forward_record import ModuleCall


class LinearReadout:
    """A linear layer whose output is the model's output (see the module docstring)."""

    def __init__(self, call: ModuleCall, param_names: dict[int, str]):
        self.call = call
        self.module = cast(nn.Linear, call.module)  # nn.Linear or a registered scaled linear layer
        self.param_names = param_names
        self.input = call.args[0]
        self.scale = input_scale(self.module)
        # Sizes from the weight, not the attributes: mup's MuSharedReadout sets them swapped.
        self.out_features, self.in_features = self.module.weight.shape

    def worthwhile(self) -> bool:
        return self.in_features < self.out_features and self.input.requires_grad

    def squared_norms(self, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Per-sample ‖J_i‖_F² of the readout's own weight and bias, over the counted positions."""
        with torch.no_grad():
            n = self.input.shape[0]
            inputs = self.input.reshape(n, -1, self.in_features).double() * self.scale
            counted = torch.ones(inputs.shape[:2], dtype=torch.float64, device=inputs.device)
            if mask is not None:
                counted = mask.reshape(n, -1).to(torch.float64)
            norms = {}
            if self.module.weight.requires_grad:
                per_position = inputs.square().sum(dim=2)
                norms[self.param_names[id(self.module.weight)]] = self.out_features * (counted * per_position).sum(1)
            if self.module.bias is not None and self.module.bias.requires_grad:
                norms[self.param_names[id(self.module.bias)]] = self.out_features * counted.sum(1)
            return norms

    def input_mixing(self) -> Tensor:
        """c·Sᵀ with S Sᵀ = WᵀW (eigen-decomposition; W may be rank-deficient, e.g. zero-initialized)."""
        with torch.no_grad():
            weight = self.module.weight.double()
            eigenvalues, eigenvectors = torch.linalg.eigh(weight.T @ weight)
            root = eigenvectors * eigenvalues.clamp(min=0).sqrt()
            return (self.scale * root.T).to(self.input.dtype)
