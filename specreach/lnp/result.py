"""The LNP result record and the one place where its components are assembled.

Every estimator ends in :func:`assemble_result`, so the formulas of
``docs/concepts.md`` (the contract in ``lnp-math.md``) live in exactly one function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

NAN = float("nan")


@dataclass(frozen=True)
class ChiNet:
    """χ_net of one batch, Σ_i ‖J_i‖_F², with its standard error and per-group split."""

    value: float
    stderr: float = NAN
    by_group: Mapping[str, float] = field(default_factory=dict)
    #: Degrees of freedom of the standard error (Welch–Satterthwaite); NaN when exact.
    dof: float = NAN
    #: Random probes drawn for this batch (None: exact).
    probes: int | None = None


@dataclass(frozen=True)
class LNPResult:
    """The LNP components of one measurement, as Python floats.

    ``grad_dot = loss_magnitude * network_magnitude * spectral_position`` (D = L·N·P), and
    the normalized pair moves the batch-size factors across: L̃ = L·sqrt(m_A m_B),
    Ñ = N / sqrt(m_A m_B). Standard errors are NaN for quantities computed exactly.
    ``spectral_position`` is NaN when the loss gradient is zero (there is no direction).
    """

    grad_dot: float
    loss_magnitude: float
    network_magnitude: float
    spectral_position: float
    loss_magnitude_normalized: float
    network_magnitude_normalized: float
    chi_loss_a: float
    chi_loss_b: float
    chi_net_a: float
    chi_net_b: float
    #: The losses L_A and L_B at the measured parameters.
    loss_a: float
    loss_b: float
    units_a: int
    units_b: int
    full_batch: bool
    estimator: str
    probes: int | None
    chi_net_a_stderr: float = NAN
    chi_net_b_stderr: float = NAN
    #: Effective degrees of freedom of those standard errors (they are widened by t_ν/z, so that
    #: ±2 standard errors covers 95 % even with few probes); NaN when exact.
    chi_net_a_dof: float = NAN
    chi_net_b_dof: float = NAN
    network_magnitude_stderr: float = NAN
    network_magnitude_normalized_stderr: float = NAN
    spectral_position_stderr: float = NAN
    #: Share of N carried by each top-level submodule (root-owned parameters by their own name).
    #: Full batch: each group's Σ_i ‖J_i,group‖_F²; cross batch: N times the group's share of
    #: χ_net averaged over A and B. The values sum to ``network_magnitude``.
    network_magnitude_by_group: Mapping[str, float] = field(default_factory=dict)
    #: Per-mode quantities an estimator reports, by name. Explicit-kernel estimators, full batch:
    #: ``eigenvalues`` λ_k of the eNTK (descending) and ``projections`` c_k = (v_kᵀ g)² / ‖g‖², so
    #: that P = Σ_k c_k λ_k / Σ_j λ_j. The engine saves every array of a measured step.
    arrays: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    #: Anything else an estimator reports (plugins put their own quantities here).
    extras: Mapping[str, float] = field(default_factory=dict)
    #: Per-sample-norm estimators: parameter name -> how its per-sample gradient was computed
    #: (layer rule, module VJP, enclosing VJP, readout closed form, unused); see docs/estimators.md.
    paths: Mapping[str, str] = field(default_factory=dict)
    #: Whether D used the training step's own gradient on A (``measure_lnp_at_step``); False when
    #: none was given, or when the step's outputs showed it computed a different function (dropout
    #: active, mixed precision) and the gradient was recomputed on the measured function.
    step_gradient_reused: bool = False

    def __post_init__(self) -> None:
        for name in ("network_magnitude_by_group", "extras", "paths", "arrays"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    @property
    def eigenvalues(self) -> tuple[float, ...] | None:
        return self.arrays.get("eigenvalues")

    @property
    def projections(self) -> tuple[float, ...] | None:
        return self.arrays.get("projections")

    def as_dict(self) -> dict[str, float]:
        """Flat scalar metrics (for logging): every float field, groups as ``network_magnitude/<group>``."""
        scalars: dict[str, float] = {
            name: float(getattr(self, name))
            for name in (
                "grad_dot", "loss_magnitude", "network_magnitude", "spectral_position",
                "loss_magnitude_normalized", "network_magnitude_normalized",
                "chi_loss_a", "chi_loss_b", "chi_net_a", "chi_net_b", "loss_a", "loss_b",
                "chi_net_a_stderr", "chi_net_b_stderr", "network_magnitude_stderr",
                "network_magnitude_normalized_stderr", "spectral_position_stderr",
            )
        }
        for group, value in self.network_magnitude_by_group.items():
            scalars[f"network_magnitude/{group}"] = float(value)
        scalars.update({name: float(value) for name, value in self.extras.items()})
        return scalars


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator != 0 else NAN


def assemble_result(
    *,
    estimator: str,
    probes: int | None,
    grad_dot: float,
    loss_a: float,
    loss_b: float,
    chi_loss_a: float,
    chi_loss_b: float,
    chi_net_a: ChiNet,
    chi_net_b: ChiNet,
    units_a: int,
    units_b: int,
    full_batch: bool,
    arrays: Mapping[str, tuple[float, ...]] | None = None,
    extras: Mapping[str, float] | None = None,
    paths: Mapping[str, str] | None = None,
    step_gradient_reused: bool = False,
) -> LNPResult:
    """Combine the per-batch quantities into D, L, N, P and their normalized forms."""
    extras = dict(extras or {})
    if chi_net_a.probes is not None and chi_net_b.probes is not None:  # probes each batch used (adaptive K)
        extras.setdefault("probes_a", float(chi_net_a.probes))
        extras.setdefault("probes_b", float(chi_net_b.probes))
    loss_magnitude = math.sqrt(chi_loss_a * chi_loss_b)
    network_magnitude = math.sqrt(chi_net_a.value * chi_net_b.value)
    spectral_position = _ratio(grad_dot, loss_magnitude * network_magnitude)
    batch_scale = math.sqrt(units_a * units_b)

    # Delta method: N = sqrt(χ_A χ_B). Full batch reuses one estimate, so N = χ and se(N) = se(χ);
    # cross batch, the two estimates are independent and their relative errors add in quadrature / 2.
    if full_batch:
        relative_error_n = _ratio(chi_net_a.stderr, chi_net_a.value)
    else:
        relative_error_n = 0.5 * math.hypot(
            _ratio(chi_net_a.stderr, chi_net_a.value), _ratio(chi_net_b.stderr, chi_net_b.value)
        )
    network_magnitude_stderr = network_magnitude * relative_error_n

    by_group: dict[str, float] = {}
    for group in dict.fromkeys([*chi_net_a.by_group, *chi_net_b.by_group]):
        share_a = _ratio(chi_net_a.by_group.get(group, 0.0), chi_net_a.value)
        share_b = _ratio(chi_net_b.by_group.get(group, 0.0), chi_net_b.value)
        by_group[group] = network_magnitude * 0.5 * (share_a + share_b)

    return LNPResult(
        grad_dot=grad_dot,
        loss_magnitude=loss_magnitude,
        network_magnitude=network_magnitude,
        spectral_position=spectral_position,
        loss_magnitude_normalized=loss_magnitude * batch_scale,
        network_magnitude_normalized=network_magnitude / batch_scale,
        chi_loss_a=chi_loss_a,
        chi_loss_b=chi_loss_b,
        chi_net_a=chi_net_a.value,
        chi_net_b=chi_net_b.value,
        loss_a=loss_a,
        loss_b=loss_b,
        units_a=units_a,
        units_b=units_b,
        full_batch=full_batch,
        estimator=estimator,
        probes=probes,
        chi_net_a_stderr=chi_net_a.stderr,
        chi_net_b_stderr=chi_net_b.stderr,
        chi_net_a_dof=chi_net_a.dof,
        chi_net_b_dof=chi_net_b.dof,
        network_magnitude_stderr=network_magnitude_stderr,
        network_magnitude_normalized_stderr=network_magnitude_stderr / batch_scale,
        spectral_position_stderr=abs(spectral_position) * relative_error_n,
        network_magnitude_by_group=by_group,
        arrays=arrays or {},
        extras=extras,
        paths=paths or {},
        step_gradient_reused=step_gradient_reused,
    )
