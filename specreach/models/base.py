"""The model-builder interface: the explicit contract between a model and the engine.

A builder turns a validated parameter model into an ``nn.Module``. What the engine needs to know
about a model it asks the builder, never the module's attributes:

- ``build(params)``: the model (and its muP variant);
- ``output_size(params)``: outputs per position (a vocabulary, classes, 1 for regression), checked
  against the data before anything trains;
- ``example_batch(params, batch_size, generator)``: inputs and targets of the shapes the model takes
  (muP's coordinate check and smoke tests need no data);
- ``fit_to_data(params, info)``: parameters the data decides when the spec leaves them out (a Llama's
  ``vocab``);
- ``width_field`` and ``at_width``: which parameter is the width muP scales;
- ``representation_size(params)``, with the model's ``representation(inputs)`` method: the
  final-layer representation a linear probe trains on (:func:`representation_of` checks the method
  is defined by the model's class; an attribute that merely happens to be called ``features`` does
  not count).

Register a builder from a plugin with ``register(MyBuilder)`` in the ``register_models`` hook.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Generic, TypeVar, cast

import torch
from pydantic import BaseModel
from torch import Tensor, nn

from specreach.datainfo import DataInfo


P = TypeVar("P", bound=BaseModel)


class ModelBuilder(ABC, Generic[P]):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    #: Which parameter is the model's width (muP's base width refers to it); None: no width.
    width_field: ClassVar[str | None] = None

    @abstractmethod
    def build(self, params: P, *, mup_base: P | None = None) -> nn.Module:
        """The model with its standard initialization. With ``mup_base`` (the same architecture at
        muP's base width) the muP variant: the output layer a ``MuReadout`` that starts as the
        standard head (:func:`mup_readout_from`), attention logits scaled by
        sqrt(base head_dim)/head_dim. At the base width both are exactly the standard model, so
        muP there is the same function as standard parameterization. Base shapes and the
        rescaling of hidden weights are applied by ``specreach.models.parameterization``, which
        assumes the standard initialization gives hidden weight matrices a width-independent
        standard deviation (Llama's and timm's 0.02)."""

    @abstractmethod
    def output_size(self, params: P) -> int:
        """Outputs per position: the last dimension of ``build(params)(inputs)``."""

    @abstractmethod
    def example_batch(self, params: P, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(inputs, targets)``: a random batch of the shapes and dtypes the model takes, drawn from
        ``generator`` only, with targets as the data sources of its task give them."""

    def fit_to_data(self, params: P, info: DataInfo) -> P:
        """``params`` with what the data decides filled in where the spec left it out (default: as given)."""
        return params

    def at_width(self, params: P, width: int) -> P:
        """The same architecture at another width, every width dimension scaled along."""
        raise ValueError(f"model '{self.name}' has no width to scale (muP needs one)")

    def representation_size(self, params: P) -> int:
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
    return cast(Callable[[Tensor], Tensor], model.representation)


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
