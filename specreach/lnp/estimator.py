"""The estimator interface, and the shared flow of estimators built on per-sample norms.

An estimator is a class with a ``name``, a Pydantic ``Params`` model of its options
(unknown options are refused) and a ``measure(problem) -> LNPResult`` method.
Register it from a plugin with ``register(MyEstimator)``.

Most estimators only differ in how they get χ_net = Σ_i ‖J_i‖_F² of a batch: subclass
:class:`PerSampleNormEstimator` and implement ``chi_net``; it does the rest — the forward
passes, the loss magnitudes, ⟨∇L_A, ∇L_B⟩ (reusing the training step's gradient when given),
and the assembly of the result.
"""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor

from specreach.params.estimators import NoParams
from specreach.lnp.distributed import Ranks
from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.lnp.loss_units import counts_nothing
from specreach.lnp.problem import (
    Batch, BatchOutputs, MeasurementProblem, batch_outputs, forward, gradient_dot, loss_of, squared_norm,
)
from specreach.lnp.result import ChiNet, LNPResult, assemble_result
from specreach.lnp.step_forward import note_same_in_training, same_in_training


class Estimator(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    #: Whether the estimator draws random probes: then its ``Params`` has a ``probes`` option.
    uses_probes: ClassVar[bool] = False

    def __init__(self, **options):
        self.params = self.Params(**options)

    @abstractmethod
    def measure(self, problem: MeasurementProblem) -> LNPResult:
        """Measure the LNP components of ``problem`` (model state is restored by the caller)."""


class PerSampleNormEstimator(Estimator):
    """Estimators that sum per-sample squared gradient norms of probe backwards."""

    @abstractmethod
    def chi_net(self, tape: PerSampleNormTape, outputs: Tensor, problem: MeasurementProblem) -> ChiNet:
        """χ_net of the batch whose forward ``tape`` recorded and which produced ``outputs``.

        Only the positions in ``tape.output_mask`` count (None: all); :class:`ProbeAccumulator`
        applies it.
        """

    def measure(self, problem: MeasurementProblem) -> LNPResult:
        a = self._measure_batch(problem, problem.batch_a, "A", problem.outputs_a)
        grad_a = a.global_gradient(problem)
        if problem.batch_b is None:
            b, grad_dot = a, gradient_dot(grad_a, grad_a)
        else:
            b = self._measure_batch(problem, problem.batch_b, "B", None)
            assert b.gradient is not None  # never reused on B
            # D = Σ_r (m_r/m) ⟨∇L_A, ∇L_B,r⟩: a scalar per rank
            grad_dot = gradient_dot(grad_a, b.gradient) * b.share
            if problem.ranks is not None:
                grad_dot = problem.ranks.sum([grad_dot])[0]
        return assemble_result(
            estimator=self.name,
            probes=problem.probes,
            grad_dot=grad_dot,
            loss_a=a.loss,
            loss_b=b.loss,
            chi_loss_a=a.chi_loss,
            chi_loss_b=b.chi_loss,
            chi_net_a=a.chi_net,
            chi_net_b=b.chi_net,
            units_a=a.units,
            units_b=b.units,
            full_batch=problem.full_batch,
            paths={**b.paths, **a.paths},
            step_gradient_reused=problem.grad_a is not None and a.gradient is None,
        )

    def _measure_batch(self, problem: MeasurementProblem, batch: Batch, which: str,
                       step_outputs: Tensor | None) -> "_BatchMeasurement":
        """One forward with the tape on; g, L, m, χ_net and (unless the step's is reused) ∇_θ L.

        A training step's gradient on A is reused only if the step computed the function
        measured here (same outputs): after a step with dropout or in mixed precision it is
        recomputed, so that D, L and N come from one function. In a data-parallel step
        (``problem.ranks``) the batch is this rank's shard; L, χ_loss, m and χ_net come back as the
        global batch's (:mod:`specreach.lnp.distributed`), and the step's gradient (DDP's average) is
        reused only where it is the global batch's: every rank computed the measured function, on
        shards of as many units.
        """
        ranks = problem.ranks
        recorded = problem.step_forward if which == "A" else None
        with torch.enable_grad():
            if recorded is not None and same_in_training(problem.model) and recorded.tape.adopt(recorded.outputs):
                tape, outputs = recorded.tape, recorded.outputs  # the step's own forward: no second one
            else:
                tape = PerSampleNormTape(problem.model, problem.params)
                outputs = tape.record(lambda: forward(problem.model, batch.inputs, which))
                if recorded is not None and same_in_training(problem.model) is None:
                    note_same_in_training(problem.model, recorded.outputs, outputs)  # once per model
                recorded = None
            tape.ranks = ranks
            try:
                with ranks.agreed() if ranks is not None else contextlib.nullcontext():
                    gradient: tuple[Tensor, ...] | None = None
                    # g and L always through loss_fn (cheap): the step's own loss may differ from the measured
                    # one (a penalty, an accumulation scale), and would give them silently wrong.
                    output_grad: Tensor | None = None
                    loss_value: float | None = None
                    if ranks is not None and counts_nothing(problem.loss_fn, batch.targets, problem.ignore_index,
                                                            batch.loss_mask):
                        # a shard of nothing but ignored targets: no units, no part of g, L or N
                        measured, gradient = _empty_shard(batch, outputs), tuple(map(torch.zeros_like, problem.params.values()))
                    else:
                        if step_outputs is None or (recorded is None and not same_function(outputs, step_outputs)):
                            gradient, output_grad, loss_value = self._gradient(problem, batch, outputs, which)
                        measured = batch_outputs(problem, batch, outputs, which, output_grad, loss_value)
                counts, reused = [measured.units], [gradient is None]
                if ranks is not None:
                    counts, reused = map(list, zip(*ranks.gather((measured.units, gradient is None))))
                reusable = all(reused) and len(set(counts)) == 1  # DDP averages: the global gradient on even shards
                if gradient is None and not reusable:
                    gradient = self._gradient(problem, batch, outputs, which)[0]
                if gradient is None and not step_gradient_fits(tape, outputs, measured.output_grad, problem):
                    warnings.warn(
                        "grad_a is not the gradient of the loss on batch A (it was clipped, scaled, or accumulated "
                        "over several batches?): A's own gradient was computed instead. Measure after "
                        "loss.backward() and before clipping or accumulating.", stacklevel=4)
                    gradient = self._gradient(problem, batch, outputs, which)[0]
                tape.output_mask = measured.mask
                chi_net = self.chi_net(tape, outputs, problem)
                paths = tape.paths
            finally:
                tape.clear()
        units = sum(counts)
        if units == 0:
            raise ValueError(f"batch {which} has no counted targets on any rank (every target is ignored); "
                             "LNP is undefined for it")
        share = measured.units / units
        # The global loss is the mean over every rank's units: each shard's g scales by m_r / m.
        loss, chi_loss = measured.loss * share, squared_norm(measured.output_grad) * share**2
        if ranks is not None:
            loss, chi_loss = ranks.sum([loss, chi_loss])
        return _BatchMeasurement(loss, chi_loss, units, chi_net, gradient, paths, share, ranks)

    @staticmethod
    def _gradient(problem: MeasurementProblem, batch: Batch, outputs: Tensor,
                  which: str) -> tuple[tuple[Tensor, ...], Tensor, float]:
        """∇_θ L of the batch, g = ∂L/∂f and L, by one backward of the recorded forward (kept for the probes)."""
        params = list(problem.params.values())
        loss = loss_of(problem.loss_fn, outputs, batch.targets, which)
        output_grad, *grads = torch.autograd.grad(loss, [outputs, *params], retain_graph=True, allow_unused=True)
        # The loss's graph (e.g. a log-softmax over the vocabulary) goes with this frame.
        return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)), output_grad, float(loss.detach())


def step_gradient_fits(tape: PerSampleNormTape, outputs: Tensor, output_grad: Tensor,
                       problem: MeasurementProblem) -> bool:
    """Whether the training step's gradient is ∇L_A, as far as a linear readout shows.

    Its weight's gradient has a closed form, G = Σ_t g_t (c·a_t)ᵀ over every sample and position, from
    what the measurement has anyway: a clipped, rescaled or accumulated gradient differs from it.
    Compared along two fixed random directions v (G v = gᵀ(a v): no vocabulary-sized product), to
    0.5 %: TF32 matmuls on a GPU round both sides at about 1e-3, and a gradient clipped by less
    than that changes D by less.
    Without a linear readout there is nothing cheap to compare, and the step's gradient is trusted.
    In a data-parallel step (even shards: see ``_measure_batch``) the closed form is averaged over the ranks.
    """
    readout = tape.linear_readout(outputs)
    assert problem.grad_a is not None
    if readout is None or not readout.module.weight.requires_grad:
        return True
    index = list(problem.params).index(readout.param_names[id(readout.module.weight)])
    with torch.no_grad():
        width = readout.in_features
        generator = torch.Generator(device=outputs.device).manual_seed(0)
        directions = torch.randn(width, 2, generator=generator, device=outputs.device, dtype=outputs.dtype)
        g = output_grad.reshape(-1, readout.out_features)
        a = readout.input.reshape(-1, width)
        expected = (g.T @ (a @ directions) * readout.scale).double()
        if problem.ranks is not None:  # DDP's average over even shards: the mean of the shards' gradients
            expected = problem.ranks.sum_tensor(expected / problem.ranks.size)
        given = (problem.grad_a[index].to(directions.dtype) @ directions).double()
        return bool(torch.linalg.vector_norm(given - expected) <= 5e-3 * torch.linalg.vector_norm(expected) + 1e-30)


@dataclass(frozen=True)
class _BatchMeasurement:
    """What one batch contributes; no tensors of its forward, so its graph is freed before the next.
    L, χ_loss, m and χ_net are the global batch's; the gradient is this rank's shard's."""

    loss: float
    chi_loss: float
    units: int
    chi_net: ChiNet
    gradient: tuple[Tensor, ...] | None  # None: the training step's gradient is reused
    paths: dict[str, str]
    share: float = 1.0  # m_r / m: this rank's part of the batch's units
    ranks: Ranks | None = None

    def global_gradient(self, problem: MeasurementProblem) -> tuple[Tensor, ...]:
        """∇L of the global batch: the step's (already global), or Σ_r (m_r/m) ∇L_r over the ranks."""
        if self.gradient is None:
            assert problem.grad_a is not None  # the step's gradient is reused only when given
            return problem.grad_a
        if self.ranks is None:
            return self.gradient
        dense = [g.to_dense() if g.is_sparse else g for g in self.gradient]
        flat = torch.cat([(torch.view_as_real(g) if g.is_complex() else g).reshape(-1).double() for g in dense])
        summed = self.ranks.sum_tensor(flat * self.share)
        pieces, start = [], 0
        for g in dense:
            size = g.numel() * (2 if g.is_complex() else 1)
            piece = summed[start:start + size]
            pieces.append((torch.view_as_complex(piece.reshape(*g.shape, 2)) if g.is_complex()
                           else piece.reshape(g.shape)).to(g.dtype))
            start += size
        return tuple(pieces)


def _empty_shard(batch: Batch, outputs: Tensor) -> BatchOutputs:
    """What a shard whose every target is ignored contributes: nothing, with every position left out."""
    targets = batch.targets
    shape = targets.shape if isinstance(targets, Tensor) and tuple(outputs.shape[:targets.dim()]) == tuple(
        targets.shape) else outputs.shape[:1]
    mask = torch.zeros(shape, dtype=torch.bool, device=outputs.device)
    return BatchOutputs(outputs, torch.zeros_like(outputs), 0.0, mask, 0)


def same_function(outputs: Tensor, step_outputs: Tensor) -> bool:
    """Whether the step's outputs are the measured function's (up to float32 rounding)."""
    if step_outputs.shape != outputs.shape:
        raise ValueError(f"outputs_a has shape {tuple(step_outputs.shape)}, the model's outputs on batch A "
                         f"{tuple(outputs.shape)}: pass the training step's outputs on batch A")
    reference = outputs.detach()
    step_outputs = step_outputs.to(reference.dtype)
    if torch.equal(step_outputs, reference):
        return True
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    return torch.allclose(step_outputs, reference, rtol=1e-4, atol=1e-5 * scale)
