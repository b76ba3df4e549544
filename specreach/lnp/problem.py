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

from specreach.lnp.distributed import Ranks
from specreach.lnp.loss_units import IgnoreIndex, check_loss, counted_positions, units_of

LossFn = Callable[[Tensor, Any], Tensor]


@dataclass(frozen=True)
class Batch:
    """One batch: ``inputs`` (a tensor, a tuple of positional tensors, or a dict of keyword
    tensors), ``targets``, the loss-reduction units m when the caller fixes them, and an optional
    loss mask over the positions (True: the position enters the loss)."""

    inputs: Any
    targets: Any
    units: int | None = None
    loss_mask: Tensor | None = None

    @property
    def size(self) -> int:
        return batch_size(self.inputs)


@dataclass(frozen=True)
class MeasurementProblem:
    model: nn.Module
    loss_fn: LossFn
    params: dict[str, nn.Parameter]  # θ: the trainable parameters, by name
    batch_a: Batch
    batch_b: Batch | None  # None: full batch, B = A
    generator: torch.Generator
    probes: int | None  # the estimator's probes option (estimators that draw probes), for reporting
    grad_a: tuple[Tensor, ...] | None = None  # the training step's ∇L_A, aligned with params
    outputs_a: Tensor | None = None  # the training step's outputs (logits) on A
    ignore_index: IgnoreIndex = "auto"
    #: the ranks of a data-parallel step, whose shards make the global batches (None: this process alone)
    ranks: Ranks | None = None
    #: the training step's own recorded forward on A (see specreach.lnp.step_forward), when usable
    step_forward: Any = None

    @property
    def full_batch(self) -> bool:
        return self.batch_b is None


@dataclass(frozen=True)
class BatchOutputs:
    """What one forward on a batch gives every estimator: outputs f, g = ∂L/∂f, L, and which
    positions count (``mask``, None: all) with the resulting unit count m."""

    outputs: Tensor
    output_grad: Tensor
    loss: float
    mask: Tensor | None
    units: int


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            "the model has no trainable parameters (none has requires_grad=True), so its eNTK is empty; "
            "unfreeze the parameters whose kernel you want to measure"
        )
    inference = [name for name, p in params.items() if p.is_inference()]
    if inference:
        raise ValueError(
            f"parameters {inference[:3]} were created under torch.inference_mode(), so autograd cannot "
            "differentiate them; build or load the model outside inference_mode"
        )
    return params


def check_measurable(model: nn.Module) -> None:
    """Refuse what makes per-sample Jacobians undefined, naming the module (``lnp-math.md`` §8)."""
    if torch.is_inference_mode_enabled():
        raise ValueError(
            "measure_lnp was called inside torch.inference_mode(), where autograd is off; call it outside "
            "(it needs gradients, and leaves the model's .grad untouched)"
        )
    for name, module in model.named_modules():
        where = f"module '{name or type(module).__name__}'"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_mean is None):
            raise ValueError(
                f"{where} is a {type(module).__name__} that normalizes with the statistics of the batch "
                f"({'training mode' if module.training else 'track_running_stats=False'}), which couples the "
                "samples of a batch, so per-sample Jacobians (and the LNP components) are not defined; measure "
                "with running statistics (model.eval() with track_running_stats=True), or use LayerNorm/GroupNorm"
            )
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            if module.scale_grad_by_freq:
                raise ValueError(
                    f"{where} has scale_grad_by_freq=True: its gradients are divided by how often each token "
                    "occurs in the whole batch, which couples the samples; per-sample Jacobians are not defined"
                )
            if module.max_norm is not None:
                raise ValueError(
                    f"{where} has max_norm={module.max_norm}: its forward rescales the weight rows in place, so "
                    "measuring would change the model; renormalize outside the forward, or set max_norm=None"
                )


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """The deterministic function: every module in eval mode (dropout off), and activations that
    work in place (``nn.ReLU(inplace=True)`` after a norm, as in ResNets) out of place — the same
    values, but the norm's output keeps its own gradient. Each module's own settings restored."""
    modes = [(module, module.training) for module in model.modules()]
    in_place: list[Any] = [module for module in model.modules() if getattr(module, "inplace", None) is True]
    model.eval()
    for module in in_place:
        module.inplace = False
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for module in in_place:
            module.inplace = True


#: Dtypes too coarse to measure in: per-sample norms and D came out 7 % (float16) to 34 % (bfloat16)
#: off on a small MLP. Parameters and buffers in them are measured in float32.
HALF_PRECISION = (torch.float16, torch.bfloat16)


@contextlib.contextmanager
def full_precision(model: nn.Module) -> Iterator[None]:
    """Autocast off, and half-precision parameters and buffers in float32 while measuring.

    Mixed precision is for training. A model kept in float16/bfloat16 is measured as the same
    values in float32 (exact: every half-precision number is a float32 one): each tensor's data is
    swapped for a float32 copy and swapped back afterwards, so tied weights, hooks and the
    optimizer's references are untouched. Inputs and targets follow (see :func:`upcast`).
    """
    device_types = {p.device.type for p in model.parameters()} | {"cpu"}
    swapped = [(t, t.data) for t in (*model.parameters(), *model.buffers()) if t.dtype in HALF_PRECISION]
    with contextlib.ExitStack() as stack:
        for device_type in device_types:
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        try:
            for tensor, data in swapped:
                tensor.data = data.float()
            yield
        finally:
            for tensor, data in swapped:
                tensor.data = data


@contextlib.contextmanager
def parametrizations_recomputed() -> Iterator[None]:
    """Inside ``torch.nn.utils.parametrize.cached()`` a parametrized weight is computed once, before
    the forward, so the forward never shows the parametrization's own parameters (a LoRA's A and B
    would get no per-sample gradient). While measuring, the cache is off: the same values, with every
    use of A and B inside the recorded forward. The user's cache is left as it was."""
    from torch.nn.utils import parametrize

    enabled = parametrize._cache_enabled
    parametrize._cache_enabled = 0
    try:
        yield
    finally:
        parametrize._cache_enabled = enabled


@contextlib.contextmanager
def measured_function(model: nn.Module) -> Iterator[None]:
    """The function every measurement takes D, L and N from: eval mode, full precision, parametrizations
    recomputed at each use."""
    with evaluation_mode(model), full_precision(model), parametrizations_recomputed():
        yield


def upcast(values: Any) -> Any:
    """Half-precision tensors in ``values`` (any nesting) as float32; everything else as it is."""
    if isinstance(values, Tensor):
        return values.float() if values.dtype in HALF_PRECISION else values
    if isinstance(values, dict):
        return {key: upcast(value) for key, value in values.items()}
    if isinstance(values, (tuple, list)):
        return type(values)(upcast(value) for value in values)
    return values


def make_batch(batch: Any, which: str, units: int | None, loss_mask: Tensor | None = None) -> Batch:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"batch_{which} must be a pair (inputs, targets), got {type(batch).__name__}")
    inputs, targets = batch
    size = batch_size(inputs)
    if size == 0:
        raise ValueError(f"batch_{which} is empty: it has no samples to measure")
    if units is not None and (isinstance(units, bool) or not isinstance(units, int) or units < 1):
        raise ValueError(f"units_{which} must be a positive count of loss-reduction units, got {units!r}")
    return Batch(upcast(inputs), upcast(targets), units, loss_mask)


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
    """Run the model; the per-sample output f_i is ``outputs[i]`` with trailing dims flattened.

    The measured function must be deterministic (D, L and N from one function): a forward that
    draws from the global random generator even in eval mode is refused.
    """
    before = rng_states(model)
    outputs = call_model(model, inputs)
    if not all(torch.equal(a, b) for a, b in zip(before, rng_states(model))):
        raise ValueError(
            f"the model's forward on batch {which} draws random numbers even in eval mode, so each forward is a "
            "different function and D, L and N would not come from one; make the forward deterministic in "
            "eval mode (e.g. dropout through nn.Dropout or F.dropout(..., training=self.training))"
        )
    outputs = check_outputs(outputs, inputs, which)
    refuse_reentrant_checkpoints(outputs)
    return outputs


def refuse_reentrant_checkpoints(outputs: Tensor) -> None:
    """``torch.utils.checkpoint(..., use_reentrant=True)`` runs its region without a graph, so
    gradients with respect to the tensors inside it (which per-sample norms need) do not exist."""
    seen: set[int] = set()
    stack = [outputs.grad_fn] if outputs.grad_fn is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if type(node).__name__ == "CheckpointFunctionBackward":
            raise ValueError(
                "the model uses torch.utils.checkpoint with use_reentrant=True, whose region keeps no "
                "autograd graph, so per-sample gradients inside it cannot be taken; use "
                "use_reentrant=False (or turn activation checkpointing off while measuring, e.g. "
                "model.gradient_checkpointing_disable() in transformers)"
            )
        stack.extend(next_node for next_node, _ in node.next_functions if next_node is not None)


def rng_states(model: nn.Module) -> list[Tensor]:
    states = [torch.get_rng_state()]
    for device in {p.device for p in model.parameters() if p.device.type == "cuda"}:
        states.append(torch.cuda.get_rng_state(device))
    return states


def call_model(model: nn.Module, inputs: Any):
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)``, by the inputs' kind."""
    if isinstance(inputs, dict):
        outputs = model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        outputs = model(*inputs)
    else:
        outputs = model(inputs)
    return outputs


def check_outputs(outputs: Any, inputs: Any, which: str) -> Tensor:
    if not isinstance(outputs, Tensor):
        raise TypeError(
            f"the model returned {type(outputs).__name__} on batch {which}; measure_lnp needs a tensor of "
            "per-sample outputs (wrap the model so that it returns e.g. the logits)"
        )
    if outputs.dim() == 0 or outputs.shape[0] != batch_size(inputs):
        raise ValueError(f"the model's outputs on batch {which} have shape {tuple(outputs.shape)}; "
                         "the first dimension must be the batch")
    if not torch.isfinite(outputs.sum()) and not torch.isfinite(outputs).all():  # the sum: one cheap pass
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


def batch_outputs(problem: MeasurementProblem, batch: Batch, outputs: Tensor, which: str,
                  output_grad: Tensor | None = None, loss: float | None = None) -> BatchOutputs:
    """g, L, the counted positions and m of a batch, from its outputs (no backward through the
    network); pass ``output_grad`` and ``loss`` when a backward already gave them."""
    check_loss(problem.loss_fn, outputs, batch.targets, which, problem.params)
    if output_grad is None or loss is None:
        output_grad, loss = output_gradient(problem.loss_fn, outputs, batch.targets, which)
    mask = counted_positions(problem.loss_fn, outputs, batch.targets, output_grad, which,
                             problem.ignore_index, batch.loss_mask)
    units = batch.units if batch.units is not None else units_of(problem.loss_fn, outputs, batch.targets, mask, batch.size)
    return BatchOutputs(outputs, output_grad, loss, mask, units)


def squared_norm(tensor: Tensor, chunk: int = 1 << 20) -> float:
    """‖t‖² accumulated in float64, a million entries at a time (a language model's output gradient
    has tens of millions: a float64 copy of it all would add to the measurement's peak memory).
    ``vector_norm(dtype=float64)`` widens inside its reduction: about 5× faster than squaring a copy."""
    flat = tensor.detach().reshape(-1)
    return math.fsum(float(torch.linalg.vector_norm(flat[start:start + chunk], dtype=torch.float64)) ** 2
                     for start in range(0, flat.numel(), chunk))


def gradient_dot(grads_a: Sequence[Tensor], grads_b: Sequence[Tensor]) -> float:
    """⟨∇L_A, ∇L_B⟩ summed in float64 (sparse gradients, e.g. of ``nn.Embedding(sparse=True)``, too).

    A complex parameter's entries are two real coordinates each: the inner product is
    Re Σ conj(a)·b (``lnp-math.md`` §9), as autograd's gradients of a real loss require."""
    def flat(grad: Tensor) -> Tensor:
        grad = (grad.to_dense() if grad.is_sparse else grad).reshape(-1)
        return torch.view_as_real(grad.to(torch.complex128)).reshape(-1) if grad.is_complex() else grad.double()

    return math.fsum(float(torch.dot(flat(a), flat(b))) for a, b in zip(grads_a, grads_b))


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Measuring leaves no trace: global RNG states and buffers (e.g. BatchNorm statistics) are restored.

    Parameters are not copied (that would double the model's memory): a forward that changes one
    in place (``F.embedding(..., max_norm=...)``) is refused by the forward recorder before it runs,
    and caught here, by the parameter's version counter, where no recorder ran (``entk``).
    """
    devices = sorted({b.device.index or 0 for b in [*model.parameters(), *model.buffers()] if b.device.type == "cuda"})
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    versions = [(name, p, p._version) for name, p in model.named_parameters()]
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
    changed = [name for name, p, version in versions if p._version != version]
    if changed:
        raise ValueError(
            f"the model's forward modified the parameters {changed[:5]} in place while measuring (e.g. "
            "F.embedding(..., max_norm=...)), so the model has changed and the measurement is of no one "
            "function; make the forward leave its parameters alone"
        )
