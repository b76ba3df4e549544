"""The model-builder interface.

A builder turns a validated parameter model into an ``nn.Module``. It knows which of its
parameters are widths, so that muP can build base and delta models at other widths
(``specreach.models.parameterization``). Register a builder from a plugin with
``register(MyBuilder)`` in the ``register_models`` hook.

A model that a linear probe can be trained on defines a ``representation(inputs)`` method: its
final-layer representation, the input of its output layer (:func:`representation_of` checks for it;
an attribute that merely happens to be called ``features`` does not count).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Callable, ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor, nn


class ModelBuilder(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    #: Which parameter is the model's width (muP's base width refers to it); None: no width.
    width_field: ClassVar[str | None] = None

    @abstractmethod
    def build(self, params: BaseModel, *, mup_base: BaseModel | None = None) -> nn.Module:
        """The model with its standard initialization. With ``mup_base`` (the same architecture at
        muP's base width) the muP variant: the output layer a ``MuReadout`` that starts as the
        standard head (:func:`mup_readout_from`), attention logits scaled by
        sqrt(base head_dim)/head_dim. At the base width both are exactly the standard model, so
        muP there is the same function as standard parameterization. Base shapes and the
        rescaling of hidden weights are applied by ``specreach.models.parameterization``, which
        assumes the standard initialization gives hidden weight matrices a width-independent
        standard deviation (Llama's and timm's 0.02)."""

    def at_width(self, params: BaseModel, width: int) -> BaseModel:
        """The same architecture at another width, every width dimension scaled along."""
        raise ValueError(f"model '{self.name}' has no width to scale (muP needs one)")

    def representation_size(self, params: BaseModel) -> int:
        """Size of the last dimension of the model's ``representation(inputs)``."""
        raise ValueError(f"model '{self.name}' has no final-layer representation to probe")


def scaled_dimension(value: int, width: int, reference: int, what: str) -> int:
    """``value · width / reference``, which must come out whole."""
    scaled = value * width / reference
    if scaled != int(scaled) or scaled < 1:
        raise ValueError(
            f"width {width} scales {what} {value} (at width {reference}) to {scaled:g}, not a whole number; "
            "choose a base width that divides evenly"
        )
    return int(scaled)


def representation_of(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """The model's ``representation`` method, which its class must define (a submodule or other
    attribute of that name is not one)."""
    if not inspect.isfunction(getattr(type(model), "representation", None)):
        raise TypeError(f"{type(model).__name__} defines no representation(inputs) method giving its final-layer "
                        "representation, so a linear probe cannot be trained on it")
    return model.representation


def mup_readout_from(head: nn.Linear):
    """A ``mup.MuReadout`` holding the standard head's weights: at the base width (width
    multiplier 1) it computes exactly what the standard head does."""
    import mup

    readout = mup.MuReadout(head.in_features, head.out_features, bias=head.bias is not None,
                            device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        readout.weight.copy_(head.weight)
        if head.bias is not None:
            readout.bias.copy_(head.bias)
    return readout
