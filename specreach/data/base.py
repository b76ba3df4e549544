"""The data-source interface: a training stream ordered by a data seed, and a fixed validation pool.

A data source is a class with a ``name``, a Pydantic ``Params`` model of its options (extra keys
forbidden) and the methods below. Register it from a plugin with ``register(MySource)`` in the
``register_datasets`` hook. Batches are ``(inputs, targets)`` pairs of CPU tensors:

- ``next-token``: inputs (B, T) int64 tokens, targets (B, T) int64, the inputs shifted by one;
- ``classification``: inputs float (B, *input_shape), targets (B,) int64 class indices;
- ``regression``: inputs float (B, *input_shape), targets (B, 1) float.

The training order depends only on ``data_seed`` (model seeds vary while the data order stays
fixed, as in the paper), and the validation pool never overlaps the training stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterator

from pydantic import BaseModel
from torch import Tensor

from specreach.datainfo import DataInfo, Task

__all__ = ["Batch", "DataInfo", "DataSource", "Task"]

Batch = tuple[Tensor, Tensor]


class DataSource(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]

    def __init__(self, **options):
        self.params = self.Params(**options)

    @abstractmethod
    def info(self) -> DataInfo:
        """Task, shapes and sizes (cheap: must not load the whole data set)."""

    @abstractmethod
    def validation_pool(self) -> Batch:
        """The fixed held-out pool that measurement batches B are drawn from (and evaluation uses)."""

    @abstractmethod
    def train_batches(self, batch_size: int, data_seed: int, start: int = 0) -> Iterator[Batch]:
        """Training batches in an order fixed by ``data_seed``, beginning at batch number ``start``
        (resuming an interrupted run skips batches without producing them). Finite sources stop
        after one epoch; the caller asks again for the next epoch with ``data_seed + epoch``."""
