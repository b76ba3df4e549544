"""One epoch of batches in an order fixed by the data seed, with a cheap skip to batch ``start``.

Every finite source shuffles sample indices with its own ``torch.Generator`` seeded by
``data_seed`` (never the global RNG, which model seeds drive), cuts the order into
``count // batch_size`` full batches and builds only the batches from ``start`` on: skipping
costs one slice of the index order, not a data read. Batches are all full, so every training
step (and every measurement on a training batch) sees ``batch_size`` samples, and an epoch has
``train_samples // batch_size`` steps, as the training loop counts them; the ``count %
batch_size`` samples left over differ from epoch to epoch, since each epoch has its own seed.
A batch of the whole set (``batch_size = count``) is one batch per epoch.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from specreach.data.base import Batch


def check_batch_request(batch_size: int, start: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be a non-negative integer (a batch number), got {start!r}")


def shuffled_order(count: int, data_seed: int) -> Tensor:
    """A permutation of ``range(count)`` that depends on ``data_seed`` only."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(data_seed))


def batches_in_order(order: Tensor, batch_size: int, start: int, fetch: Callable[[Tensor], Batch]) -> Iterator[Batch]:
    """``fetch`` each consecutive slice of ``order`` (sample indices), from batch number ``start`` on.

    The request is checked now, not at the first ``next()``, so a bad batch size fails at the call."""
    check_batch_request(batch_size, start)
    full_batches = len(order) // batch_size
    return (fetch(order[number * batch_size: (number + 1) * batch_size]) for number in range(start, full_batches))
