"""The pieces of a training run that depend only on its RunSpec: data, network, step count,
the batch stream, evaluation, the device and the precision."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from specreach.data.base import DataSource
from specreach.datainfo import DataInfo
from specreach.engine.runs import RunSpec
from specreach.models.linear_probe import LinearProbe
from specreach.models.parameterization import build_model, builder_for, load_model
from specreach.params.models import ModelRecipe
from specreach.plugins import create

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda where this machine has a GPU, else cpu; a named GPU must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name} but this machine has no CUDA GPU; use device: auto or cpu")
    return device


def autocast(precision: str, device: torch.device):
    """The training forward's arithmetic: fp32 as is, or bf16 autocast (weights stay float32)."""
    if precision == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_data(run: RunSpec) -> DataSource:
    return create("dataset", run.data.kind, **run.data.params)


def model_recipe(run: RunSpec, info: DataInfo) -> ModelRecipe:
    """The run's model recipe with what the data decides filled in (a Llama's vocab when not given)."""
    builder = builder_for(run.recipe.kind)
    params = builder.fit_to_data(builder.Params(**run.recipe.params), info)
    return run.recipe.model_copy(update={"params": params.model_dump()})


def build_network(run: RunSpec, outputs: int, recipe: ModelRecipe | None = None) -> nn.Module:
    """The run's network from ``recipe`` (default: the run's own, see :func:`model_recipe`)."""
    recipe = recipe or run.recipe
    if run.phase == "train":
        return build_model(recipe)
    if run.phase == "probe-trained":
        assert run.backbone_checkpoint is not None  # expand() sets it for every probe of a trained backbone
        backbone, _ = load_model(run.backbone_checkpoint)
    else:  # a fresh random backbone, from the same recipe and seed as the trained one
        backbone = build_model(recipe)
    builder = builder_for(recipe.kind)
    size = builder.representation_size(builder.Params(**recipe.params))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        return LinearProbe(backbone, size, outputs)


def warmup_factor(warmup_steps: int):
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def tokens_per_sample(info) -> int:
    """Tokens one sample puts through the model: its positions for next-token tasks, else 1."""
    return info.input_shape[0] if info.task == "next-token" else 1


def total_steps(run: RunSpec, data: DataSource, parameters: int) -> int:
    if run.train.steps is not None:
        return run.train.steps
    if run.train.flops is not None:  # C = 6 · N · D: the steps this size can afford
        tokens_per_step = run.train.batch_size * tokens_per_sample(data.info())
        return max(1, round(run.train.flops / (6 * parameters * tokens_per_step)))
    samples = data.info().train_samples
    if samples is None:
        raise ValueError(f"data '{run.data.kind}' is an unbounded stream: give train.steps")
    return run.train.epochs * max(1, samples // run.train.batch_size)


def batches(data: DataSource, run: RunSpec, start: int):
    """Training batches from step ``start`` on, across epochs (epoch e uses data_seed + e)."""
    per_epoch = None
    samples = data.info().train_samples
    if samples is not None:
        per_epoch = max(1, samples // run.train.batch_size)
    epoch, offset = (start // per_epoch, start % per_epoch) if per_epoch else (0, start)
    while True:
        produced = 0
        for batch in data.train_batches(run.train.batch_size, run.train.data_seed + epoch, start=offset):
            produced += 1
            yield batch
        if produced == 0 and offset == 0:
            raise ValueError(f"data '{run.data.kind}' yields no batches of size {run.train.batch_size}")
        epoch, offset = epoch + 1, 0


def to_device(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)


def evaluate(model: nn.Module, loss_fn, pool, batch_size: int, device, dtype) -> float:
    """Mean loss over the validation pool, in the model's own precision (never autocast)."""
    inputs, targets = pool
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            x = to_device(inputs[start:start + batch_size], device, dtype)
            y = to_device(targets[start:start + batch_size], device, dtype)
            total += float(loss_fn(model(x), y)) * x.shape[0]
            count += x.shape[0]
    return total / count
