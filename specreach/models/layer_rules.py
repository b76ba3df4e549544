"""Per-sample rules for third-party layers, registered as plugin components (``register_layer_rules``)
so that the measurement core imports none of their packages.

- muP's ``MuReadout`` (and ``MuSharedReadout``): a linear layer on ``output_mult · x / width_mult()``.
- timm's ``LayerNorm``: ``nn.LayerNorm`` with an optional fused kernel, same math; ``LayerNorm2d``:
  the same over the channels of an (n, C, H, W) input.
- Hugging Face's ``Conv1D`` (GPT-2 and its kin): a linear layer with its weight stored transposed.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any


class MupReadoutRules:
    name = "mup-readout"
    requires = "mup"

    @staticmethod
    def install() -> None:
        import mup

        from specreach.lnp.layer_rules import register_call_context, register_linear

        def readout_input_scale(layer: Any) -> float:  # a MuReadout: linear(output_mult · x / width_mult())
            return layer.output_mult / layer.width_mult()

        for kind in (mup.MuReadout, mup.MuSharedReadout):
            register_linear(kind, readout_input_scale)
        register_call_context(fixed_width_mults)


@contextlib.contextmanager
def fixed_width_mults(module):
    """muP readouts read their width multiplier from ``weight.infshape``, which the stand-in
    tensors of ``torch.func.functional_call`` do not carry; pin each readout's multiplier meanwhile."""
    import mup

    readouts = [m for m in module.modules() if isinstance(m, (mup.MuReadout, mup.MuSharedReadout))]
    for readout in readouts:
        readout.width_mult = functools.partial(lambda value: value, readout.width_mult())
    try:
        yield
    finally:
        for readout in readouts:
            del readout.width_mult


class TimmLayerNormRules:
    name = "timm-layernorm"
    requires = "timm"

    @staticmethod
    def install() -> None:
        import timm.layers
        from torch import nn

        from specreach.lnp.grad_samplers import channels_first_layer_norm
        from specreach.lnp.layer_rules import register_layer, register_same_math

        register_same_math(timm.layers.LayerNorm, nn.LayerNorm)
        register_layer(timm.layers.LayerNorm2d, channels_first_layer_norm,
                       "channels-first (n, C, *spatial) inputs, with or without bias, real weights")


class TransformersConv1DRules:
    name = "transformers-conv1d"
    requires = "transformers"

    @staticmethod
    def install() -> None:
        from transformers.pytorch_utils import Conv1D

        from specreach.lnp.grad_samplers import transposed_linear
        from specreach.lnp.layer_rules import register_layer

        register_layer(Conv1D, transposed_linear, "any input shape (…, nx), with bias, real weights")
