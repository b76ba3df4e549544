"""Standard and muP parameterization, and checkpoints that survive muP.

muP through the ``mup`` package: the builder's muP variant (a ``MuReadout`` starting as the
standard head, attention scaled by sqrt(base head_dim)/head_dim), base and delta models built from
the base width so that ``set_base_shapes`` sees every width dimension, hidden weights rescaled by
1/sqrt(fan-in multiplier) after the shapes are set, and ``MuAdamW``. At the base width a muP model
is the standard model of the same seed, weight for weight.

``infshape`` lives on parameter objects and survives neither ``torch.save`` nor ``deepcopy``.
A checkpoint therefore stores the model's recipe with its weights, and :func:`load_model`
rebuilds the model (shapes included) before loading the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mup
import torch
from pydantic import BaseModel
from torch import nn

from specreach.models.base import ModelBuilder
from specreach.params.models import ModelRecipe, Parameterization
from specreach.plugins import create
from specreach.state_digest import mismatch, with_digest

def builder_for(kind: str) -> ModelBuilder:
    return create("model", kind)


def build_model(recipe: ModelRecipe) -> nn.Module:
    """Build and initialize the model; the global RNG is left as it was."""
    builder = builder_for(recipe.kind)
    params = builder.Params(**recipe.params)
    is_mup = recipe.parameterization.kind == "mup"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        if not is_mup:
            return builder.build(params)
        base_width = recipe.parameterization.base_width
        assert base_width is not None  # Parameterization requires it for muP
        model = builder.build(params, mup_base=builder.at_width(params, base_width))
        apply_mup(model, builder, params, base_width)
    return model


def apply_mup(model: nn.Module, builder: ModelBuilder, params: BaseModel, base_width: int) -> None:
    """Set base shapes from base and delta models at base_width and 2·base_width, then rescale."""
    if builder.width_field is None:
        raise ValueError(f"model '{builder.name}' has no width, so muP does not apply")
    base_params = builder.at_width(params, base_width)
    with torch.device("meta"):  # only the shapes are needed
        base = builder.build(base_params, mup_base=base_params)
        delta = builder.build(builder.at_width(params, 2 * base_width), mup_base=base_params)
    mup.set_base_shapes(model, base, delta=delta)
    rescale_hidden_weights(model)


def rescale_hidden_weights(model: nn.Module) -> None:
    """muP initialization of the hidden weights (both dimensions scale with width): the standard
    draw scaled by 1/sqrt(fan-in multiplier), the scale ``mup.init`` applies to a fresh draw of the
    same standard deviation. Rescaling the standard draw instead of redrawing keeps the base-width
    model identical to the standard one. Input-like weights (patch, token and positional
    embeddings: one width dimension), norms and biases keep the standard initialization, which muP
    leaves as it is; readouts keep the initialization ``set_base_shapes`` rescaled."""
    readout_params = {id(p) for m in model.modules() if isinstance(m, mup.MuReadout) for p in m.parameters()}
    with torch.no_grad():
        for param in model.parameters():
            infshape = param.infshape  # type: ignore[attr-defined]  # set by mup.set_base_shapes
            if id(param) in readout_params or infshape.ninf() != 2:
                continue
            param.mul_(infshape.width_mult() ** -0.5)


def optimizer_for(model: nn.Module, parameterization: Parameterization, **adamw: Any) -> torch.optim.Optimizer:
    """AdamW for standard models, ``MuAdamW`` (per-width learning rates) for muP models."""
    params = [p for p in model.parameters() if p.requires_grad]
    if parameterization.kind == "mup":
        return mup.MuAdamW(params, **adamw)
    return torch.optim.AdamW(params, **adamw)


def save_checkpoint(path: str | Path, model: nn.Module, recipe: ModelRecipe, **extra: Any) -> None:
    """The model and its recipe, with a checksum of both (:mod:`specreach.state_digest`)."""
    torch.save(with_digest({"recipe": recipe.model_dump(), "state_dict": model.state_dict(), **extra}), path)


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model from the checkpoint's recipe (restoring muP base shapes) and load its weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: expected a file written by specreach's save_checkpoint")
    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    if "recipe" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a specreach checkpoint (it has no 'recipe' and 'state_dict')")
    if mismatch(checkpoint):
        raise ValueError(f"{path}: does not match the checksum written with it: its contents changed on disk (a "
                         "flipped bit?); train the model again (delete its run folder, or rerun with --overwrite)")
    recipe = ModelRecipe(**checkpoint["recipe"])
    model = build_model(recipe)
    model.load_state_dict(checkpoint["state_dict"])
    return model, checkpoint
