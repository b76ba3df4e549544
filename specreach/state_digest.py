"""A digest of a checkpoint's contents, stored in the checkpoint itself.

``torch.load`` does not notice a flipped bit in a tensor (the zip archive's CRCs are not checked),
so a checkpoint damaged on disk would resume silently with other numbers. Each checkpoint carries
the SHA-256 of what it holds (every tensor's dtype, shape and bytes, every other value's ``repr``,
in a fixed order), and loading recomputes it: inside the file, so that a crash can never leave a
checkpoint and its digest out of step.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

import torch

KEY = "checksum"


def _feed(hasher: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, Mapping):
        hasher.update(f"mapping {len(value)};".encode())
        for key in sorted(value, key=repr):
            hasher.update(f"{key!r}:".encode())
            _feed(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        hasher.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _feed(hasher, item)
    else:
        hasher.update(f"{value!r};".encode())


def digest(state: Mapping[str, Any]) -> str:
    """The SHA-256 of ``state`` without its own checksum."""
    hasher = hashlib.sha256()
    _feed(hasher, {key: value for key, value in state.items() if key != KEY})
    return hasher.hexdigest()


def with_digest(state: dict[str, Any]) -> dict[str, Any]:
    return {**state, KEY: digest(state)}


def mismatch(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` carries a checksum that its contents no longer match (one written before
    checkpoints had checksums carries none)."""
    return KEY in state and state[KEY] != digest(state)
