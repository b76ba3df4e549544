"""Next-token samples cut from one token stream: non-overlapping windows of ``context + 1`` tokens.

A window gives inputs = its first ``context`` tokens and targets = its last ``context`` (the
inputs shifted by one). The validation pool is held out as the stream's tail, so no training
window shares a single token with it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from specreach.data.base import Batch


class TokenWindows:
    """The windows of a 1-D token array (any integer dtype; kept as is, converted per batch)."""

    def __init__(self, tokens: np.ndarray, context: int):
        self.context = context
        self.count = len(tokens) // (context + 1)
        # A view, not a copy: the stream can be large (uint16 tokens of a whole corpus).
        self.rows = tokens[: self.count * (context + 1)].reshape(self.count, context + 1)

    def batch(self, indices: Tensor | np.ndarray | range) -> Batch:
        windows = torch.from_numpy(self.rows[np.asarray(indices, dtype=np.int64)].astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def all(self) -> Batch:
        return self.batch(range(self.count))


def held_out_tokens(validation_size: int, context: int) -> int:
    """How many tokens the validation pool takes: ``validation_size`` whole windows."""
    return validation_size * (context + 1)


def split_tail(tokens: np.ndarray, context: int, validation_size: int, what: str) -> tuple[TokenWindows, TokenWindows]:
    """(training windows, validation windows): the validation pool is the stream's last tokens."""
    held_out = held_out_tokens(validation_size, context)
    if len(tokens) < held_out + context + 1:
        raise ValueError(
            f"{what} has {len(tokens)} tokens: too few for a validation pool of {validation_size} windows of "
            f"{context + 1} tokens ({held_out} tokens) plus at least one training window; "
            "use a smaller validation_size or context, or more text"
        )
    return TokenWindows(tokens[:-held_out], context), TokenWindows(tokens[-held_out:], context)


def token_dtype(vocab: int) -> type[np.integer]:
    """The smallest unsigned dtype that holds every token id (a corpus stream can be large)."""
    return np.uint8 if vocab <= 1 << 8 else np.uint16 if vocab <= 1 << 16 else np.uint32
