"""``kta``: the ``entk`` estimator plus the kernel-target alignment of the eNTK with the loss gradient."""

from __future__ import annotations

import dataclasses

from specreach.lnp.entk import Entk


class KernelTargetAlignment(Entk):
    """``entk`` plus ``extras['kernel_target_alignment']`` = g_Bᵀ Θ_BA g_A / (‖Θ_BA‖_F ‖g_A‖ ‖g_B‖)."""

    name = "kta"

    def measure(self, problem):
        lin_a, lin_b = self.kernel_problem(problem)
        result = self.result_from(problem, lin_a, lin_b)
        kernel_norm = float((lin_b.jacobian @ lin_a.jacobian.T).norm())
        denominator = kernel_norm * result.loss_magnitude
        alignment = result.grad_dot / denominator if denominator > 0 else float("nan")
        return dataclasses.replace(result, extras={"kernel_target_alignment": alignment})
