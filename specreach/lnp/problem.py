"""What an estimator is asked to measure, checked once, and the helpers every estimator shares.

:func:`specreach.measure_lnp` turns the user's arguments into a :class:`MeasurementProblem`;
an estimator (built-in or plugin) turns that into an :class:`~specreach.lnp.result.LNPResult`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

LossFn = Callable[[Tensor, Any], Tensor]


@dataclass(frozen=True)
class Batch:
    """One batch: ``inputs`` (a tensor, a tuple of positional tensors, or a dict of keyword
    tensors), ``targets``, and ``units`` m, the number of loss-reduction units."""

    inputs: Any
    targets: Any
    units: int


@dataclass(frozen=True)
class MeasurementProblem:
    model: nn.Module
    loss_fn: LossFn
    params: dict[str, nn.Parameter]  # θ: the trainable parameters, by name
    batch_a: Batch
    batch_b: Batch | None  # None: full batch, B = A
    generator: torch.Generator
    probes: int | None
    grad_a: tuple[Tensor, ...] | None = None  # the training step's ∇L_A, aligned with params
    outputs_a: Tensor | None = None  # the training step's outputs (logits) on A

    @property
    def full_batch(self) -> bool:
        return self.batch_b is None


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            "the model has no trainable parameters (none has requires_grad=True), so its eNTK is empty; "
            "unfreeze the parameters whose kernel you want to measure"
        )
    return params


def check_samples_independent(model: nn.Module) -> None:
    """Per-sample quantities need f_i to depend on sample i alone; BatchNorm in training mode breaks that."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise ValueError(
                f"module '{name}' is a BatchNorm in training mode, which couples the samples of a batch, so "
                "per-sample Jacobians (and the LNP components) are not defined; measure with the model in eval "
                "mode (model.eval()), or use LayerNorm/GroupNorm"
            )


def make_batch(batch: Any, which: str, units: int | None) -> Batch:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"batch_{which} must be a pair (inputs, targets), got {type(batch).__name__}")
    inputs, targets = batch
    size = batch_size(inputs)
    if size == 0:
        raise ValueError(f"batch_{which} is empty: it has no samples to measure")
    if units is None:
        units = targets.numel() if isinstance(targets, Tensor) else size
    if units < 1:
        raise ValueError(f"units_{which} must be a positive count of loss-reduction units, got {units}")
    return Batch(inputs, targets, int(units))


def batch_size(inputs: Any) -> int:
    first = inputs
    if isinstance(inputs, dict):
        first = next(iter(inputs.values()), None)
    elif isinstance(inputs, (tuple, list)):
        first = inputs[0] if inputs else None
    if not isinstance(first, Tensor):
        raise TypeError("inputs must be a tensor, a tuple of tensors or a dict of tensors (batch first)")
    return first.shape[0] if first.dim() > 0 else 0


def forward(model: nn.Module, inputs: Any, which: str) -> Tensor:
    """Run the model; the per-sample output f_i is ``outputs[i]`` with trailing dims flattened."""
    if isinstance(inputs, dict):
        outputs = model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        outputs = model(*inputs)
    else:
        outputs = model(inputs)
    if not isinstance(outputs, Tensor):
        raise TypeError(
            f"the model returned {type(outputs).__name__} on batch {which}; measure_lnp needs a tensor of "
            "per-sample outputs (wrap the model so that it returns e.g. the logits)"
        )
    if outputs.dim() == 0 or outputs.shape[0] != batch_size(inputs):
        raise ValueError(f"the model's outputs on batch {which} have shape {tuple(outputs.shape)}; "
                         "the first dimension must be the batch")
    if not torch.isfinite(outputs).all():
        raise ValueError(f"the model's outputs on batch {which} contain NaN or Inf; LNP is undefined there")
    return outputs


def loss_of(loss_fn: LossFn, outputs: Tensor, targets: Any, which: str) -> Tensor:
    loss = loss_fn(outputs, targets)
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(
            f"loss_fn must return a scalar (mean-reduced) loss; on batch {which} it returned {shape}. "
            "Use reduction='mean'."
        )
    if not torch.isfinite(loss):
        raise ValueError(f"the loss on batch {which} is {loss.item()}; LNP is undefined for a non-finite loss")
    return loss


def output_gradient(loss_fn: LossFn, outputs: Tensor, targets: Any, which: str) -> tuple[Tensor, float]:
    """g_X = ∂L_X/∂F_X, through the loss function only (no backward through the network), and L_X."""
    detached = outputs.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_of(loss_fn, detached, targets, which)
        (grad,) = torch.autograd.grad(loss, detached)
    return grad, float(loss.detach())


def squared_norm(tensor: Tensor) -> float:
    return float(tensor.double().square().sum())


def gradient_dot(grads_a: Sequence[Tensor], grads_b: Sequence[Tensor]) -> float:
    """⟨∇L_A, ∇L_B⟩ summed in float64."""
    return math.fsum(float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))
                     for a, b in zip(grads_a, grads_b))


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Measuring leaves no trace: global RNG states and buffers (e.g. BatchNorm statistics) are restored."""
    devices = sorted({b.device.index or 0 for b in [*model.parameters(), *model.buffers()] if b.device.type == "cuda"})
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
