"""The built-in self-check: samples independent, and per-sample norms against plain autograd.

The fast path computes per-sample gradient norms from module hooks and layer rules over the
whole batch, assuming every sample's outputs depend on that sample alone. The check proves both
on the first two samples of a batch:

- **Independence.** Each of the two samples run alone must give the outputs it has in the batch,
  and one backward from the last sample's outputs must reach no other sample's row of the tensors
  the fast path splits by sample. A forward that couples the samples (batch statistics such as
  ``F.batch_norm(..., training=True)`` or ``x - x.mean(0)``, in-batch negatives, a router with a
  capacity) is refused: per-sample Jacobians are not defined for it (``lnp-math.md`` §8).
- **Norms.** One Rademacher probe r on the two samples (zero on the others), and for every
  parameter group the fast path's Σ_i ‖∂(r_iᵀ f_i)/∂θ_group‖² on the whole batch against a plain
  ``torch.autograd.grad`` of r_iᵀ f_i on each sample alone. That reference knows nothing of hooks,
  rules, tied weights or parametrizations, so a gap of any kind shows up as a mismatch. When a
  linear readout's share is taken in closed form, the probes drawn in its input space are checked
  the same way.

It costs about a measurement's forward and two single-sample forwards and backwards per probe
space. :func:`~specreach.lnp.measure.measure_lnp`, the monitor and the callbacks run it once per
model (:func:`verify_once`, keyed on the model's structure, its trainable parameters and the shape
of a sample); the engine at each run's first measurement; ``specreach check-model`` on demand.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from specreach.lnp.layer_rules import install_layer_rules
from specreach.lnp.loss_units import IgnoreIndex, counts_nothing, mask_outputs
from specreach.lnp.per_sample_norms import PerSampleNormTape, group_of
from specreach.lnp.problem import (
    Batch, MeasurementProblem, batch_outputs, batch_size, check_measurable, forward,
    make_batch, measured_function, trainable_parameters, untouched,
)
from specreach.lnp.probes import rademacher

#: Relative tolerance (of the total) per parameter dtype: the two computations round differently.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 5e-2, torch.float16: 2e-2}


class SamplesCoupledError(ValueError):
    """The model's outputs for one sample depend on other samples of the batch."""


class VerificationError(ValueError):
    """The fast per-sample norms disagree with plain autograd (the message lists the groups)."""

    def __init__(self, message: str, report: "VerificationReport"):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class GroupCheck:
    fast: float
    reference: float

    @property
    def relative_error(self) -> float:
        return abs(self.fast - self.reference) / self.reference if self.reference else abs(self.fast)


@dataclass(frozen=True)
class VerificationReport:
    samples: int
    tolerance: float
    #: probe space ("outputs" or "readout input") -> parameter group -> fast and reference values
    groups: Mapping[str, Mapping[str, GroupCheck]]
    #: parameter name -> how the fast path computes it
    paths: Mapping[str, str] = field(default_factory=dict)

    def mismatches(self) -> list[tuple[str, str, GroupCheck]]:
        found = []
        for space, checks in self.groups.items():
            total = sum(check.reference for check in checks.values())
            for group, check in checks.items():
                if abs(check.fast - check.reference) > self.tolerance * max(total, 1e-300):
                    found.append((space, group, check))
        return found

    @property
    def ok(self) -> bool:
        return not self.mismatches()

    def describe(self) -> str:
        lines = [f"per-sample norms on {self.samples} samples, fast path against plain autograd "
                 f"(tolerance {self.tolerance:g} of the total):"]
        for space, checks in self.groups.items():
            lines.append(f"  probes in the {space}:")
            for group, check in checks.items():
                lines.append(f"    {group:<24} fast {check.fast:.6e}  reference {check.reference:.6e}  "
                             f"relative error {check.relative_error:.1e}")
        return "\n".join(lines)


def verify_model(model: nn.Module, loss_fn, batch: tuple[Any, Any], *, params: Mapping[str, nn.Parameter] | None = None,
                 samples: int = 2, ignore_index: IgnoreIndex = "auto", loss_mask: Tensor | None = None,
                 generator: torch.Generator | None = None, raise_on_mismatch: bool = True) -> VerificationReport:
    """Check the fast per-sample norms of ``model`` on the first ``samples`` samples of ``batch``.

    The fast path runs on the whole batch, probing only those samples (the others get zero
    probes), so that what depends on the batch's size is checked too: a layer that sees the batch
    along another dimension (a sequence-first layer whose sequence length equals the batch size)
    splits its gradient by the wrong dimension and leaks into the other samples. The reference
    runs each probed sample alone.

    Raises :class:`VerificationError` with the per-group mismatch (unless ``raise_on_mismatch``
    is False); returns the report otherwise. The model comes back untouched.
    """
    install_layer_rules()
    params = dict(params) if params is not None else trainable_parameters(model)
    check_measurable(model)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    inputs, targets = batch
    n = batch_size(inputs)
    count = min(samples, n)
    whole = make_batch(batch, "a", None, loss_mask)
    problem = MeasurementProblem(model=model, loss_fn=loss_fn, params=params, batch_a=whole, batch_b=None,
                                 generator=generator, probes=None, ignore_index=ignore_index)
    with untouched(model), measured_function(model), torch.enable_grad(), _no_tf32():
        report = _verify(problem, whole, n, count)
    mismatches = report.mismatches()
    if mismatches and raise_on_mismatch:
        wrong = "; ".join(
            f"{group} ({space}): fast {check.fast:.6g}, reference {check.reference:.6g} "
            f"({(check.fast - check.reference) / check.reference:+.1%})" if check.reference else
            f"{group} ({space}): fast {check.fast:.6g}, reference 0"
            for space, group, check in mismatches
        )
        involved = {group for _, group, _ in mismatches}
        paths = "; ".join(f"{name}: {path}" for name, path in report.paths.items() if group_of(name) in involved)
        raise VerificationError(
            f"the per-sample gradient norms disagree with plain autograd on {count} samples: {wrong}. "
            f"How those parameters were computed: {paths}. This is a gap in the fast path for this model: "
            "measure it with estimator='entk' (small models), and please report the model.", report)
    return report


#: Per model, the fingerprints it was verified under (see :func:`verify_once`).
_VERIFIED: "weakref.WeakKeyDictionary[nn.Module, set[tuple]]" = weakref.WeakKeyDictionary()


def verify_once(model: nn.Module, loss_fn, batch: tuple[Any, Any], *, params: Mapping[str, nn.Parameter],
                ignore_index: IgnoreIndex = "auto", loss_mask: Tensor | None = None) -> VerificationReport | None:
    """:func:`verify_model`, unless this model passed it already with the same structure (its modules
    by name and type), the same trainable parameters (names, shapes, dtypes) and samples of the same
    shape; None when skipped. What the fast path does depends on exactly these."""
    fingerprint = (
        tuple((name, type(module)) for name, module in model.named_modules()),
        tuple((name, tuple(p.shape), p.dtype) for name, p in params.items()),
        tuple((tuple(t.shape[1:]), t.dtype) for t in pytree.tree_leaves(batch[0]) if isinstance(t, Tensor)),
    )
    verified = _VERIFIED.setdefault(model, set())
    if fingerprint in verified or counts_nothing(loss_fn, batch[1], ignore_index, loss_mask):
        return None  # known; or a data-parallel shard of padding alone, with nothing to check (others check)
    report = verify_model(model, loss_fn, batch, params=params, ignore_index=ignore_index, loss_mask=loss_mask)
    verified.add(fingerprint)
    return report


@contextlib.contextmanager
def _no_tf32():
    """On GPUs, TF32 matmuls and convolutions would round the two computations differently."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _verify(problem: MeasurementProblem, batch: Batch, n: int, count: int) -> VerificationReport:
    tape = PerSampleNormTape(problem.model, problem.params)
    outputs = tape.record(lambda: forward(problem.model, batch.inputs, "A"))
    try:
        _check_alone_equals_in_batch(problem.model, batch, outputs, n, count)
        _check_no_gradient_crosses_samples(tape, outputs, problem.generator)
        mask = batch_outputs(problem, batch, outputs, "A").mask

        def probe_first_samples(like: Tensor) -> Tensor:
            vectors = mask_outputs(rademacher(like.shape, problem.generator, like), mask)
            vectors[count:] = 0
            return vectors

        probe = probe_first_samples(outputs)
        groups = {"outputs": _compare(
            tape.squared_norms(outputs, probe),
            _reference(problem, batch, n, count, probe, capture=None),
        )}
        readout = tape.linear_readout(outputs)
        if readout is not None and readout.worthwhile():
            start = readout.input
            vectors = probe_first_samples(start)
            fast = tape.squared_norms(start, vectors, skip=readout)
            own = {id(p) for p in readout.module.parameters(recurse=False)}
            reference = _reference(problem, batch, n, count, vectors, capture=readout.module, skip=own)
            groups["readout input"] = _compare(fast, reference)
        paths = tape.paths
    finally:
        tape.clear()
    dtype = next(iter(problem.params.values())).dtype
    return VerificationReport(count, TOLERANCE.get(dtype, 1e-3), groups, paths)


def _coupled(what: str) -> SamplesCoupledError:
    return SamplesCoupledError(
        f"{what}: the forward couples the samples of a batch (a statistic over the batch such as "
        "F.batch_norm(..., training=True) or x - x.mean(0), a comparison with the other samples such as in-batch "
        "negatives, a router with a capacity), so per-sample Jacobians and the LNP components are not defined. "
        "Make each sample's outputs depend on that sample alone (running statistics, LayerNorm/GroupNorm; "
        "in-batch negatives belong in the loss, which must stay a mean of per-sample terms)")


def _check_alone_equals_in_batch(model: nn.Module, batch: Batch, outputs: Tensor, n: int, count: int) -> None:
    """Each of the first ``count`` samples, run alone, must give the outputs it has in the batch."""
    if n < 2:
        return
    reference = outputs.detach()
    tolerance = TOLERANCE.get(reference.dtype, 1e-3)
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    for i in range(count):
        try:
            with torch.no_grad():
                alone = forward(model, take_samples(batch.inputs, n, slice(i, i + 1)), "A")
        except Exception as error:  # noqa: BLE001 - whatever stops a sample alone is the finding
            raise _coupled(f"the model cannot run sample {i} of batch A on its own ({type(error).__name__}: "
                           f"{error})") from error
        if alone.shape[1:] != reference.shape[1:]:
            raise _coupled(f"sample {i} of batch A alone has outputs of shape {tuple(alone.shape[1:])}, in the "
                           f"batch {tuple(reference.shape[1:])}")
        gap = float((alone[0].to(reference.dtype) - reference[i]).abs().max()) if reference[i].numel() else 0.0
        if gap > tolerance * max(scale, 1e-30):
            raise _coupled(f"sample {i} of batch A gives other outputs alone than in the batch (largest "
                           f"difference {gap:.3g}, outputs up to {scale:.3g})")


def _check_no_gradient_crosses_samples(tape: PerSampleNormTape, outputs: Tensor, generator: torch.Generator) -> None:
    """One backward from the last sample's outputs must reach no other sample's row of a tensor the
    fast path splits by sample (a coupling whose values happen to agree alone and in the batch)."""
    n = outputs.shape[0]
    plan = tape.coverage
    split = [(rule.call.output, f"module '{rule.call.name}'") for rule in plan.rule_calls]
    split += [(rule.use.output, rule.name) for rule in plan.op_rules]
    split = [(t, where) for t, where in split if t.requires_grad and t.shape[0] == n and t is not outputs]
    if n < 2 or not split or not outputs.requires_grad:
        return
    probe = torch.zeros_like(outputs)
    probe[n - 1] = rademacher(outputs[n - 1:].shape, generator, outputs)[0]
    grads = torch.autograd.grad(outputs, [t for t, _ in split], grad_outputs=probe, retain_graph=True,
                                allow_unused=True)
    for (_, where), grad in zip(split, grads):
        if grad is not None and bool(grad.reshape(n, -1)[:n - 1].ne(0).any()):
            raise _coupled(f"the last sample's outputs depend on the other samples' values at the output of {where}")


def _reference(problem: MeasurementProblem, batch: Batch, n: int, count: int, vectors: Tensor,
               capture: nn.Module | None, skip: Collection[int] = frozenset()) -> dict[str, float]:
    """Σ_i ‖∂(v_iᵀ y_i)/∂θ‖² by group over the first ``count`` samples, each sample alone; y is the
    outputs, or ``capture``'s input."""
    names = [name for name, p in problem.params.items() if id(p) not in skip]
    params = [problem.params[name] for name in names]
    totals: dict[str, float] = {}
    for i in range(count):
        captured: list[Tensor] = []
        handle = None
        if capture is not None:
            handle = capture.register_forward_pre_hook(functools.partial(_keep_input, captured))
        try:
            outputs = forward(problem.model, take_samples(batch.inputs, n, slice(i, i + 1)), "A")
        finally:
            if handle is not None:
                handle.remove()
        value = captured[0] if capture is not None else outputs
        objective = (value * vectors[i:i + 1].to(value.dtype)).sum()
        grads = torch.autograd.grad(objective, params, allow_unused=True)
        for name, grad in zip(names, grads):
            if grad is not None:
                group = group_of(name)
                totals[group] = totals.get(group, 0.0) + _squared_norm(grad)
    return totals


def _squared_norm(grad: Tensor) -> float:
    """‖grad‖² in float64; a complex gradient's is Σ |a|² (``lnp-math.md`` §9); sparse ones too."""
    grad = grad.to_dense() if grad.is_sparse else grad
    return float(torch.linalg.vector_norm(grad, dtype=torch.complex128 if grad.is_complex() else torch.float64)) ** 2


def _keep_input(captured: list[Tensor], module: nn.Module, args: tuple) -> None:
    captured.append(args[0])


def _compare(fast: Mapping[str, Tensor], reference: Mapping[str, float]) -> dict[str, GroupCheck]:
    fast_groups: dict[str, float] = {}
    for name, values in fast.items():
        fast_groups[group_of(name)] = fast_groups.get(group_of(name), 0.0) + float(values.double().sum())
    return {group: GroupCheck(fast_groups.get(group, 0.0), reference.get(group, 0.0))
            for group in dict.fromkeys([*reference, *fast_groups])}


def take_samples(values: Any, n: int, samples: slice) -> Any:
    """``samples`` of every batch-first tensor (first dim ``n``) in ``values``, in any nesting."""
    if isinstance(values, Tensor):
        return values[samples] if values.dim() > 0 and values.shape[0] == n else values
    if isinstance(values, dict):
        return {key: take_samples(value, n, samples) for key, value in values.items()}
    if isinstance(values, (tuple, list)):
        return type(values)(take_samples(value, n, samples) for value in values)
    return values


def relative_gap(report: VerificationReport) -> float:
    """The largest group error relative to the total of its probe space (for printing)."""
    worst = 0.0
    for checks in report.groups.values():
        total = sum(check.reference for check in checks.values()) or 1.0
        worst = max([worst, *(abs(c.fast - c.reference) / total for c in checks.values())])
    return worst if math.isfinite(worst) else math.inf
