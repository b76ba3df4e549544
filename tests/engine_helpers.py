"""Tiny specs for engine tests: a few steps of a tiny Llama on the built-in text."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_SPEC = {
    "name": "tiny",
    "model": {
        "kind": "llama",
        "params": {"vocab": 256, "layers": 1, "heads": 2, "context": 16},
        "sizes": {"s": {"hidden": 8, "ff": 16}, "m": {"hidden": 16, "ff": 32}},
    },
    "data": {"kind": "pydoc-text", "params": {"context": 16, "validation_size": 16}},
    "train": {"lr": 3.0e-3, "warmup_steps": 2, "batch_size": 4, "steps": 12, "seeds": [0]},
    "measure": {"estimator": "hutchinson", "probes": 2, "schedule": {"windows": 3, "steps_per_window": 2},
                "batch_size": 4},
}


def write_spec(directory: Path, spec: dict | None = None, name: str = "spec.yaml", **sections) -> Path:
    spec = dict(spec or TINY_SPEC)
    spec.update(sections)
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
