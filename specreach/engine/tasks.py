"""What a task means for training: its loss function, and whether a model fits the data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from specreach.datainfo import DataInfo, outputs_problem


def token_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over every token of every sequence."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def mean_squared_error(outputs: Tensor, targets: Tensor) -> Tensor:
    return F.mse_loss(outputs, targets.reshape(outputs.shape))


LOSSES = {"next-token": token_cross_entropy, "classification": F.cross_entropy, "regression": mean_squared_error}


def loss_for(info: DataInfo):
    return LOSSES[info.task]


#: The target value cross-entropy leaves out (PyTorch's ``ignore_index``): padding, masked tokens.
IGNORED_TARGET = -100


def batch_problem(inputs: Tensor, targets: Tensor, info: DataInfo) -> str | None:
    """What makes a batch unusable whatever the model and learning rate: NaN or Inf values, or not
    one target the loss counts (the mean over no samples is NaN). None for a usable batch."""
    for name, values in (("input", inputs), ("target", targets)):
        if values.is_floating_point():
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                return f"{bad} of its {values.numel()} {name} values are NaN or Inf"
    if info.task in ("classification", "next-token") and bool((targets == IGNORED_TARGET).all()):
        return (f"it has no sample to learn from: every one of its {targets.numel()} targets is the ignored value "
                f"{IGNORED_TARGET}")
    return None


def output_size(info: DataInfo) -> int:
    """What a new linear head must emit for this task."""
    return info.task_outputs().size


def check_model_fits_data(model: nn.Module, model_params: dict, info: DataInfo, sample: Tensor,
                          model_name: str, data_name: str) -> None:
    """Fail early, with both sides named, when a model cannot consume or predict the data: its
    builder's ``output_size`` against what the task needs, then one forward on a sample."""
    from specreach.models.parameterization import builder_for

    builder = builder_for(model_name)
    problem = outputs_problem(builder.output_size(builder.Params(**model_params)), info.task_outputs(), model_name,
                              data_name)
    if problem is not None:
        raise ValueError(problem)
    try:
        with torch.no_grad():
            outputs = model(sample)
    except Exception as error:
        raise ValueError(f"model '{model_name}' cannot take inputs of data '{data_name}' (one sample's input shape "
                         f"{tuple(info.input_shape)}): {type(error).__name__}: {error}") from error
    expected = output_size(info)
    if outputs.shape[-1] != expected and not (info.task == "next-token" and outputs.shape[-1] >= expected):
        raise ValueError(f"model '{model_name}' emits {outputs.shape[-1]} outputs per position but task "
                         f"'{info.task}' of data '{data_name}' needs {expected}")

