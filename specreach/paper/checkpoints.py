"""The saved models of a run, for the measurements the paper makes on checkpoints (Figure 6's
repeated Hutchinson draws on a trained model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from specreach.paper.runs import RunData


@dataclass
class Checkpoint:
    model: nn.Module
    loss_fn: Callable
    data: Any  # the run's DataSource
    run_spec: Any  # the run's RunSpec


def trained(run: RunData) -> Checkpoint:
    """The run's trained model (``final.pt``), its loss and its data source, on the run's GPU where
    this machine has one, else on the CPU."""
    from specreach.engine.runs import RunSpec
    from specreach.engine.tasks import loss_for
    from specreach.models.parameterization import load_model
    from specreach.plugins import get_plugin_manager

    path = run.directory / "final.pt"
    if not path.is_file():
        raise FileNotFoundError(f"run {run.name} has no trained model at {path} (it writes final.pt when it finishes)")
    spec = RunSpec.model_validate(run.run_spec)
    data = get_plugin_manager().datasets()[spec.data.kind].component(**spec.data.params)
    wants_gpu = spec.train.device == "auto" or spec.train.device.startswith("cuda")
    device = ("cuda" if spec.train.device == "auto" else spec.train.device) if wants_gpu and torch.cuda.is_available() \
        else "cpu"
    model, _ = load_model(path, map_location="cpu")
    model = model.to(device=device, dtype={"float64": torch.float64}.get(spec.train.dtype, torch.float32))
    return Checkpoint(model, loss_for(data.info()), data, spec)


def first_training_batch(checkpoint: Checkpoint, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` training samples in the run's data order (a fixed set of training samples)."""
    spec = checkpoint.run_spec
    inputs, targets = next(iter(checkpoint.data.train_batches(size, spec.train.data_seed)))
    weight = next(checkpoint.model.parameters())
    return tuple(t.to(device=weight.device, dtype=weight.dtype if t.is_floating_point() else t.dtype)
                 for t in (inputs, targets))
