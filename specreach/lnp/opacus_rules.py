"""Per-sample gradient rules for layers that Opacus does not cover out of the box.

Opacus looks its rules up by exact module type, so subclasses need their own entries.
Importing this module registers them through Opacus's public decorators:

- ``mup.MuReadout`` (and ``MuSharedReadout``): a linear layer applied to
  ``output_mult * x / width_mult()``; its rule is the linear rule on the scaled input.
- ``timm.layers.LayerNorm``: ``nn.LayerNorm`` with an optional fused kernel, same math.
"""

from __future__ import annotations

import contextlib
import functools

import mup
import timm.layers
from opacus.grad_sample.layer_norm import compute_layer_norm_grad_sample
from opacus.grad_sample.linear import compute_linear_grad_sample, compute_linear_norm_sample
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler

MUP_READOUTS = (mup.MuReadout, mup.MuSharedReadout)


def readout_input_scale(layer: mup.MuReadout) -> float:
    """The factor MuReadout applies to its input before the linear map."""
    return layer.output_mult / layer.width_mult()


@register_grad_sampler(list(MUP_READOUTS))
def compute_mureadout_grad_sample(layer, activations, backprops):
    return compute_linear_grad_sample(layer, [activations[0] * readout_input_scale(layer)], backprops)


@register_norm_sampler(list(MUP_READOUTS))
def compute_mureadout_norm_sample(layer, activations, backprops):
    return compute_linear_norm_sample(layer, [activations[0] * readout_input_scale(layer)], backprops)


register_grad_sampler(timm.layers.LayerNorm)(compute_layer_norm_grad_sample)


@contextlib.contextmanager
def fixed_mup_width_mults(module):
    """muP readouts read their width multiplier from ``weight.infshape``, which the stand-in
    tensors of ``torch.func.functional_call`` do not carry; pin each readout's multiplier while it runs."""
    readouts = [m for m in module.modules() if isinstance(m, MUP_READOUTS)]
    for readout in readouts:
        readout.width_mult = functools.partial(lambda value: value, readout.width_mult())
    try:
        yield
    finally:
        for readout in readouts:
            del readout.width_mult
