"""The model-builder interface.

A builder turns a validated parameter model into an ``nn.Module``. It knows which of its
parameters are widths, so that muP can build base and delta models at other widths
(``specreach.models.parameterization``). Register a builder from a plugin with
``register(MyBuilder)`` in the ``register_models`` hook.

Every model a builder makes exposes ``features(inputs)``: the final-layer representation a
linear probe is trained on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pydantic import BaseModel
from torch import nn


class ModelBuilder(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    #: Which parameter is the model's width (muP's base width refers to it); None: no width.
    width_field: ClassVar[str | None] = None

    @abstractmethod
    def build(self, params: BaseModel, *, mup: bool = False) -> nn.Module:
        """The model with its usual initialization. ``mup=True`` swaps in the muP pieces (a
        ``MuReadout`` output layer, attention logits scaled by 1/head_dim); base shapes and the
        muP re-initialization are applied by ``specreach.models.parameterization``."""

    def at_width(self, params: BaseModel, width: int) -> BaseModel:
        """The same architecture at another width, every width dimension scaled along."""
        raise ValueError(f"model '{self.name}' has no width to scale (muP needs one)")

    def representation_size(self, params: BaseModel) -> int:
        """Size of the last dimension of ``features(inputs)``."""
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
