"""The ``hutchinson`` estimator: χ_net from K Rademacher probes drawn independently per sample.

For r_i ∈ {±1}^d, E‖r_iᵀ J_i‖² = ‖J_i‖_F², so each probe's Σ_i ‖∂(r_iᵀ f_i)/∂θ‖² is an
unbiased estimate of χ_net; the estimate is their mean over K probes. Drawing r per sample
(not one r over the whole batch) keeps the cross-sample kernel entries out of the variance.

Standard error: the samples' estimates are independent, so Var(χ̂) = Σ_i Var(s_i)/K, with each
Var(s_i) estimated from that sample's K probe values (needs K ≥ 2; NaN for K = 1). That estimate
is noisy with few probes (at K = 2, ±2 plain SE missed the truth 15–18 % of the time), so the SE is
widened by t_ν/z with ν the Welch–Satterthwaite degrees of freedom: ±2 SE covers 95 % at any K.

For a language model the output layer's share of χ_net is computed exactly and the probes
are drawn in the head's input space (``specreach.lnp.probes``), so only the layers below the
head carry probe noise; each sample's probe is reflected over positions
(:func:`~specreach.lnp.probes.position_reflection`, option ``positions``), so that the kernel's
constant-over-positions part carries none.

Adaptive K (``target_rse``): after K probes, more are drawn until χ_net's relative standard error
reaches the target or ``max_probes``; ``result.extras`` reports ``probes_a`` and ``probes_b``.

Default K = 8. Each probe costs about a third of a training step (an activation-only backward
sharing one forward), so K = 8 keeps a cross-batch measurement near seven training steps.
The relative error falls like 1/√K and, with n samples of a batch contributing
independently, like 1/√n as well: on the benchmark Llama (batch 32) one measurement with
K = 8 has under 1 % relative error on N, and averaging within measurement windows
(independent probes each step) reduces it further. ``benchmarks/lnp_cost.py`` prints it.
"""

from __future__ import annotations

from torch import Tensor

from specreach.params.estimators import HutchinsonParams
from specreach.lnp.estimator import PerSampleNormEstimator
from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.lnp.probes import ProbeAccumulator
from specreach.lnp.problem import MeasurementProblem
from specreach.lnp.result import ChiNet

class Hutchinson(PerSampleNormEstimator):
    name = "hutchinson"
    Params = HutchinsonParams
    uses_probes = True

    def chi_net(self, tape: PerSampleNormTape, outputs: Tensor, problem: MeasurementProblem) -> ChiNet:
        accumulator = ProbeAccumulator(tape, outputs, readout=self.params.readout == "exact",
                                       reflect_positions=self.params.positions == "reflected")
        for _ in range(self.params.probes):
            accumulator.add_random(problem.generator)
        chi_net = accumulator.averaged()
        target = self.params.target_rse
        if target is None:
            return chi_net
        while len(accumulator.per_probe) < self.params.max_probes and not chi_net.stderr <= target * chi_net.value:
            accumulator.add_random(problem.generator)
            chi_net = accumulator.averaged()
        return chi_net
