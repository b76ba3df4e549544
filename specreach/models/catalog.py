"""The preset catalogue with parameter counts of the built models (for ``specreach models``)."""

from __future__ import annotations

import torch

from specreach.models.parameterization import ModelRecipe, Parameterization, build_model
from specreach.models.presets import PRESETS, Preset


def parameter_count(preset: Preset) -> int:
    """Counted on the meta device: no memory, no initialization work."""
    with torch.device("meta"):
        model = build_model(ModelRecipe(kind=preset.kind, params=preset.params,
                                        parameterization=Parameterization(**preset.parameterization)))
    return sum(p.numel() for p in model.parameters())


def preset_rows() -> list[dict]:
    return [
        {
            "name": preset.name,
            "architecture": preset.kind,
            "parameters": parameter_count(preset),
            "paper_parameters": preset.paper_parameters,
            "learning_rate": preset.learning_rate,
            "parameterization": preset.parameterization,
            "params": preset.params,
            "note": preset.note,
        }
        for preset in PRESETS.values()
    ]
