"""Per-sample rules for the third-party layers the built-in models use, registered as plugin
components (``register_layer_rules``) so that the measurement core imports neither package.

- muP's ``MuReadout`` (and ``MuSharedReadout``): a linear layer on ``output_mult · x / width_mult()``.
- timm's ``LayerNorm``: ``nn.LayerNorm`` with an optional fused kernel, same math.
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

        from specreach.lnp.layer_rules import register_same_math

        register_same_math(timm.layers.LayerNorm, nn.LayerNorm)
