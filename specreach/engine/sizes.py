"""How big a spec's models are, without building them (no torch: ``specreach validate`` stays fast),
and a warning when a size cannot fit this machine.

Parameter counts are closed forms of the built-in architectures (tested against the built models);
a plugin's model kind has none and is not estimated. Training memory is at least the weights,
their gradients and AdamW's two moments: four copies of the parameters.
"""

from __future__ import annotations

from typing import Any, Callable

from specreach.machine import memory_bytes

BYTES = {"float32": 4, "float64": 8, "bfloat16": 2}
COPIES_IN_TRAINING = 4  # weights, gradients, AdamW's two moments
ABSURD_PARAMETERS = 10**12  # no machine trains this in one process


def llama_parameters(p: dict[str, Any]) -> int:
    hidden, ff, vocab, layers, heads = p["hidden"], p["ff"], p["vocab"], p["layers"], p["heads"]
    width = heads * (hidden // heads)  # the attention's inner width
    block = 4 * hidden * width + 3 * hidden * ff + 2 * hidden  # wq wk wv wo, SwiGLU, two RMSNorms
    return vocab * hidden + layers * block + hidden + hidden * vocab  # embedding, blocks, norm, untied head


def vit_parameters(p: dict[str, Any]) -> int:
    hidden, layers, classes = p["hidden"], p["layers"], p.get("classes", 10)
    image, patch, channels = p.get("image_size", 32), p.get("patch", 4), p.get("channels", 3)
    mlp = int(hidden * (p["mlp"] / hidden))  # what timm builds from mlp_ratio
    block = 2 * hidden + (3 * hidden * hidden + 3 * hidden) + (hidden * hidden + hidden) + 2 * hidden \
        + (hidden * mlp + mlp) + (mlp * hidden + hidden)
    patches = (image // patch) ** 2
    embedding = channels * patch * patch * hidden + hidden + hidden + (patches + 1) * hidden  # conv, cls, positions
    return embedding + layers * block + 2 * hidden + hidden * classes + classes


def random_features_parameters(p: dict[str, Any]) -> int:
    return p["inputs"] * p["features"] + p["features"]


ESTIMATES: dict[str, Callable[[dict[str, Any]], int]] = {
    "llama": llama_parameters, "vit": vit_parameters, "random-features": random_features_parameters,
}


def parameter_estimate(kind: str, params: dict[str, Any]) -> int | None:
    estimate = ESTIMATES.get(kind)
    if estimate is None:
        return None
    try:
        return estimate(params)
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def _gigabytes(count: float) -> str:
    return f"{count / 1e9:.3g} GB"


def size_warnings(spec, here: bool = True) -> list[str]:
    """A warning per model size whose training memory exceeds this machine's (``here``), or any machine's."""
    memory = memory_bytes() if here and spec.train.device in ("cpu", "auto") else None
    bytes_per_value = BYTES.get(spec.train.dtype, 4)
    messages = []
    for size, kind, params, _, _ in spec.model.members():
        count = parameter_estimate(kind, params)
        if count is None:
            continue
        needed = count * bytes_per_value * COPIES_IN_TRAINING
        if count > ABSURD_PARAMETERS or (memory is not None and needed > memory):
            where = f"this machine has {_gigabytes(memory)}" if memory is not None and needed > memory else \
                "more than any single machine holds"
            messages.append(f"model size '{size}' has about {count:,} parameters: training needs at least "
                            f"{_gigabytes(needed)} (weights, gradients and AdamW state in {spec.train.dtype}); "
                            f"{where}")
    return messages
