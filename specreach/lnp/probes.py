"""Probe backwards and their per-sample squared norms, summed for χ_net.

A probe is a vector r over the per-sample outputs; the backward of Σ_i r_iᵀ f_i gives, per
sample, ‖r_iᵀ J_i‖². ``exact`` feeds the unit vectors of every coordinate, ``hutchinson``
Rademacher vectors. When the model's output comes straight from a linear readout whose input is
narrower than its output (a language model's head), probes live in the readout's input space
instead (see :mod:`specreach.lnp.readout`): same expectation, far less work.

Random probes of a sequence model are reflected over positions (:func:`position_reflection`):
same expectation, less variance.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable

import torch
from torch import Tensor

from specreach.lnp.loss_units import mask_outputs
from specreach.lnp.per_sample_norms import PerSampleNormTape, group_of
from specreach.lnp.result import ChiNet


# A run asked to stop must not wait for a measurement of many probes to end: the engine's stop flag
# is looked at before every probe backward (see stop_between_probes).
_should_stop: ContextVar[Callable[[], bool] | None] = ContextVar("specreach_should_stop", default=None)


class MeasurementStopped(Exception):
    """A measurement abandoned between two probes because its run was asked to stop."""


@contextmanager
def stop_between_probes(should_stop: Callable[[], bool]):
    """Within the block, a measurement raises :class:`MeasurementStopped` before its next probe
    once ``should_stop()`` is true (the model is left as it was found, as after any error)."""
    token = _should_stop.set(should_stop)
    try:
        yield
    finally:
        _should_stop.reset(token)


#: z of the two-sided 95.45 % interval: ±2 standard errors.
_TWO_SIDED = 0.977249868


def t_widening(dof: float) -> float:
    """t_ν / z at ±2 standard errors: how much wider an interval with ν degrees of freedom must be."""
    if not math.isfinite(dof) or dof > 1e6:
        return 1.0
    from scipy.stats import t  # scipy is heavy to import; only estimators with probes need it

    return float(t.ppf(_TWO_SIDED, dof)) / 2.0


def rademacher(shape: torch.Size, generator: torch.Generator, like: Tensor) -> Tensor:
    """±1 entries, independent per sample and coordinate, from the measurement's own generator."""
    signs = torch.randint(0, 2, shape, generator=generator, device=generator.device, dtype=like.dtype)
    return signs.mul_(2).sub_(1).to(like.device)


def position_reflection(probe_shape: torch.Size, like: Tensor) -> Tensor | None:
    """v of the reflection H = I − 2vvᵀ over the positions of (batch, positions, features) probes; else None.

    H swaps the first position's axis with the constant direction u = (1, …, 1)/√T and leaves
    the other positions' axes almost in place (tilted by O(1/√T)). Probes r = Hz, z Rademacher:
    - Rademacher probes leave the kernel's diagonal (in the probe basis) out of the variance,
      Var(zᵀKz) = 2(‖K‖_F² − Σ K_kk²). A sequence model's per-sample kernel has a large
      constant-over-positions part (a parameter that moves every position's output alike), which
      the basis of single positions spreads over off-diagonal entries; H puts it on the diagonal.
    - H is orthonormal, so E[r rᵀ] = HᵀH = I: still unbiased, samples still independent (each is
      reflected on its own), and the standard error's reasoning unchanged.
    - Measured on Llamas from 8 to 128 wide, on random tokens and on text, at initialization and
      trained: about 2× less variance per probe (0.84–5.2× over 22 readings; the three below 1
      within their noise). A full DCT over positions did better on some models and up to 1.5×
      worse on trained text ones: it also turns the single-position axes, where a trained
      model's kernel concentrates (``docs/estimators.md``).
    """
    if len(probe_shape) != 3 or probe_shape[1] < 2:
        return None
    positions = probe_shape[1]
    v = torch.full((positions,), -1.0 / math.sqrt(positions), dtype=torch.float64)
    v[0] += 1.0  # e₀ − u
    return (v / torch.linalg.vector_norm(v)).to(dtype=like.dtype, device=like.device).reshape(1, positions, 1)


def reflect(vectors: Tensor, v: Tensor) -> Tensor:
    """H z = z − 2v(vᵀz) over dim 1, for the v of :func:`position_reflection`."""
    return vectors - 2 * v * (v * vectors).sum(dim=1, keepdim=True)


class ProbeAccumulator:
    """Runs probe backwards on one recorded forward and reduces their per-sample norms to χ_net.

    ``probe_shape`` is the shape of the vectors :meth:`add` takes: the outputs' shape, or the
    readout input's shape. Per-sample sums stay on the device (float64) until the reduction.
    Only the positions in ``tape.output_mask`` count: probes are zero elsewhere. ``readout=False``
    probes every output through the head as well (plain Hutchinson, no closed-form share);
    ``reflect_positions=False`` draws plain Rademacher signs at every position (see
    :func:`position_reflection`).
    """

    def __init__(self, tape: PerSampleNormTape, outputs: Tensor, readout: bool = True, reflect_positions: bool = True):
        self.tape, self.outputs, self.mask = tape, outputs, tape.output_mask
        self.per_probe: list[Tensor] = []  # probe k: Σ_p ‖∂(r_kiᵀ f_i)/∂p‖² for each sample i
        self.by_group: dict[str, Tensor] = {}  # summed over probes and samples
        found = tape.linear_readout(outputs) if readout else None
        self.readout = found if found is not None and found.worthwhile() and self._mask_fits(found) else None
        if self.readout is None:
            self.probe_shape, self._start, self._mixing = outputs.shape, outputs, None
            closed_form = {}
        else:
            self.probe_shape = self.readout.input.shape
            self._start, self._mixing = self.readout.input, self.readout.input_mixing()
            closed_form = self.readout.squared_norms(self.mask)
            for name in closed_form:
                tape.coverage.paths[name] = f"closed form of the linear readout '{self.readout.call.name}'"
        self._reflection = position_reflection(self.probe_shape, outputs) if reflect_positions else None
        # The readout's exact share of χ_net, added once to the reduced value.
        self.closed_form = sum((v.sum() for v in closed_form.values()), torch.zeros((), dtype=torch.float64))
        self.closed_form_by_group: dict[str, float] = {}
        for name, value in closed_form.items():
            group = group_of(name)
            self.closed_form_by_group[group] = self.closed_form_by_group.get(group, 0.0) + float(value.sum())

    def _mask_fits(self, readout) -> bool:
        """Ignored positions must be positions of the readout's input too (same leading dims)."""
        return self.mask is None or tuple(readout.input.shape[:self.mask.dim()]) == tuple(self.mask.shape)

    @property
    def coordinates(self) -> int:
        """Probe-space coordinates per sample: the number of backwards ``exact`` needs."""
        return self.probe_shape[1:].numel()

    def add(self, vectors: Tensor) -> None:
        """One probe backward with ``vectors`` of shape ``probe_shape``."""
        should_stop = _should_stop.get()
        if should_stop is not None and should_stop():
            raise MeasurementStopped("the run was asked to stop")
        if self._mixing is not None:
            vectors = vectors @ self._mixing
        vectors = mask_outputs(vectors, self.mask)
        norms = self.tape.squared_norms(self._start, vectors, skip=self.readout)
        total = torch.zeros(self.outputs.shape[0], dtype=torch.float64, device=self.outputs.device)
        for name, value in norms.items():
            value = value.double()
            total += value
            group = group_of(name)
            self.by_group[group] = self.by_group.get(group, 0.0) + value.sum()
        self.per_probe.append(total)

    def add_random(self, generator: torch.Generator) -> None:
        """One random probe: Rademacher signs, reflected over positions where the probes have them."""
        vectors = rademacher(self.probe_shape, generator, self.outputs)
        self.add(vectors if self._reflection is None else reflect(vectors, self._reflection))

    def summed(self) -> ChiNet:
        """χ_net when the probes were the unit vectors of every coordinate (``exact``)."""
        value = float(torch.stack(self.per_probe).sum() + self.closed_form) if self.per_probe else float(self.closed_form)
        groups = self._groups(1.0)
        ranks = self.tape.ranks
        if ranks is not None:  # every rank's samples: the global batch
            value, *values = ranks.sum([value, *groups.values()])
            groups = dict(zip(groups, values))
        return ChiNet(value, by_group=groups)

    def averaged(self) -> ChiNet:
        """χ_net as the mean over random probes with E[r rᵀ] = I, with its standard error.

        The samples' estimates are independent, so Var(χ̂) = Σ_i v_i with v_i = Var(s_i)/K, each
        Var(s_i) taken from that sample's K probe values (needs K ≥ 2; NaN for one probe). With
        few probes, or a few samples dominating, that variance estimate is itself noisy and ±2 SE
        would cover too rarely; the standard error is therefore widened by t_ν/z, with ν the
        Welch–Satterthwaite degrees of freedom (Σ v_i)² / Σ (v_i²/(K−1)), so that ±2 SE keeps its
        nominal 95.4 % coverage (tested over repeated draws in tests/test_hutchinson.py).
        """
        per_probe = torch.stack(self.per_probe)  # (K, n)
        probes = per_probe.shape[0]
        closed_form = float(self.closed_form)
        groups = self._groups(1.0 / probes)
        ranks = self.tape.ranks
        if ranks is not None:  # every rank's samples: the global batch, and its standard error
            per_probe = torch.cat([values.to(per_probe.device) for values in ranks.gather(per_probe.cpu())], dim=1)
            closed_form, *values = ranks.sum([closed_form, *groups.values()])
            groups = dict(zip(groups, values))
        value = float(per_probe.sum(dim=1).mean()) + closed_form
        stderr = dof = math.nan
        if probes > 1:
            variances = per_probe.var(dim=0, correction=1) / probes
            total = float(variances.sum())
            dof = total**2 / float(variances.square().sum() / (probes - 1)) if total > 0 else math.inf
            stderr = math.sqrt(total) * t_widening(dof)
        return ChiNet(value, stderr, groups, dof, probes)

    def _groups(self, scale: float) -> dict[str, float]:
        groups = {group: float(value) * scale for group, value in self.by_group.items()}
        for group, value in self.closed_form_by_group.items():
            groups[group] = groups.get(group, 0.0) + value
        return groups
