"""A built-in self-check: per-sample norms against plain autograd, one sample at a time.

The fast path computes per-sample gradient norms from module hooks and layer rules over the
whole batch. The check takes two samples, draws one Rademacher probe r, and compares, for every
parameter group, the fast path's Σ_i ‖∂(r_iᵀ f_i)/∂θ_group‖² with a plain ``torch.autograd.grad``
of r_iᵀ f_i on each sample alone. That reference knows nothing of hooks, rules, tied weights or
parametrizations, and a model that mixes samples gives a different f_i alone than in the batch,
so a gap of any kind shows up as a mismatch. When a linear readout's share is taken in closed
form, the probes drawn in its input space are checked the same way.

It costs two single-sample forwards and backwards per probe space: cheap enough to run at the
first measurement of every run (the engine's ``measure.verify``) and in ``specreach check-model``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Collection, Mapping

import torch
from torch import Tensor, nn

from specreach.lnp.layer_rules import install_layer_rules
from specreach.lnp.loss_units import IgnoreIndex, mask_outputs
from specreach.lnp.per_sample_norms import PerSampleNormTape, group_of
from specreach.lnp.problem import (
    Batch, MeasurementProblem, batch_outputs, batch_size, check_measurable, evaluation_mode, forward,
    full_precision, make_batch, trainable_parameters, untouched,
)
from specreach.lnp.probes import rademacher

#: Relative tolerance (of the total) per parameter dtype: the two computations round differently.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 5e-2, torch.float16: 2e-2}


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
    with untouched(model), evaluation_mode(model), full_precision(model), torch.enable_grad(), _no_tf32():
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
                totals[group] = totals.get(group, 0.0) + float(grad.double().square().sum())
    return totals


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
