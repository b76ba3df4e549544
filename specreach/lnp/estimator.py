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

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.lnp.problem import (
    Batch, MeasurementProblem, forward, gradient_dot, loss_of, output_gradient, squared_norm,
)
from specreach.lnp.result import ChiNet, LNPResult, assemble_result


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Estimator(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams
    #: Whether the estimator draws random probes (then ``probes`` is its number of probes).
    uses_probes: ClassVar[bool] = False
    default_probes: ClassVar[int | None] = None

    def __init__(self, **options):
        self.params = self.Params(**options)

    @abstractmethod
    def measure(self, problem: MeasurementProblem) -> LNPResult:
        """Measure the LNP components of ``problem`` (model state is restored by the caller)."""


class PerSampleNormEstimator(Estimator):
    """Estimators that sum per-sample squared gradient norms of probe backwards."""

    @abstractmethod
    def chi_net(self, tape: PerSampleNormTape, outputs: Tensor, problem: MeasurementProblem) -> ChiNet:
        """χ_net of the batch whose forward ``tape`` recorded and which produced ``outputs``."""

    def measure(self, problem: MeasurementProblem) -> LNPResult:
        reuse_grad_a = problem.grad_a is not None
        loss_a, chi_loss_a, chi_net_a, grad_a = self._measure_batch(
            problem, problem.batch_a, "A", not reuse_grad_a, problem.outputs_a
        )
        if reuse_grad_a:
            grad_a = problem.grad_a
        if problem.full_batch:
            loss_b, chi_loss_b, chi_net_b = loss_a, chi_loss_a, chi_net_a
            grad_dot = gradient_dot(grad_a, grad_a)
        else:
            loss_b, chi_loss_b, chi_net_b, grad_b = self._measure_batch(problem, problem.batch_b, "B", True, None)
            grad_dot = gradient_dot(grad_a, grad_b)
        batch_b = problem.batch_a if problem.full_batch else problem.batch_b
        return assemble_result(
            estimator=self.name,
            probes=problem.probes,
            grad_dot=grad_dot,
            loss_a=loss_a,
            loss_b=loss_b,
            chi_loss_a=chi_loss_a,
            chi_loss_b=chi_loss_b,
            chi_net_a=chi_net_a,
            chi_net_b=chi_net_b,
            units_a=problem.batch_a.units,
            units_b=batch_b.units,
            full_batch=problem.full_batch,
        )

    def _measure_batch(self, problem: MeasurementProblem, batch: Batch, which: str, need_grad: bool,
                       given_outputs: Tensor | None):
        """One forward with the tape on; L, χ_loss, χ_net and (if asked) ∇_θ L of the batch."""
        params = list(problem.params.values())
        tape = PerSampleNormTape(problem.model, problem.params)
        with torch.enable_grad():
            with tape:
                outputs = forward(problem.model, batch.inputs, which)
            try:
                grad = None
                if need_grad:
                    loss = loss_of(problem.loss_fn, outputs, batch.targets, which)
                    output_grad, *grad = torch.autograd.grad(
                        loss, [outputs, *params], retain_graph=True, allow_unused=True,
                    )
                    grad = tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grad))
                    loss = float(loss.detach())
                if given_outputs is not None:
                    output_grad, loss = output_gradient(problem.loss_fn, given_outputs, batch.targets, which)
                elif not need_grad:
                    output_grad, loss = output_gradient(problem.loss_fn, outputs, batch.targets, which)
                chi_net = self.chi_net(tape, outputs, problem)
            finally:
                tape.clear()
        return loss, squared_norm(output_grad), chi_net, grad
