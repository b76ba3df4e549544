"""How many Hutchinson probes the next measurement of a run draws, for a target relative standard error.

Probe noise enters N alone (D and L are exact), and P = D / (L·N) inherits N's relative error, so
one number decides: N's relative standard error, which falls like 1/√K. Each measurement gives an
estimate of the error one probe would have, ``rse² · K`` (a variance: with two probes it is itself
noisy, so the plan averages it over measurements, half weight to the newest); the next K is what
reaches the target with it, ``ceil(average / target²)``, within [``MIN_PROBES``, ``max_probes``].
Early in training the kernel's diagonal is spread and K is large; a few dozen steps in, two probes
are often enough.

K is fixed before a measurement draws its probes, so that measurement's standard error is the
ordinary one of K independent probes (no stopping on a lucky low estimate: the reported error stays
honest, as at a fixed K).
"""

from __future__ import annotations

import math
from typing import Any

from specreach.lnp.probes import t_widening

#: The fewest probes that give a standard error at all (the sample variance needs two).
MIN_PROBES = 2
#: The newest measurement's weight in the average of the one-probe variance.
NEWEST_WEIGHT = 0.5


class ProbePlan:
    def __init__(self, first: int, target_rse: float, max_probes: int):
        if not 0 < target_rse < 1:
            raise ValueError(f"target_rse must be in (0, 1), got {target_rse}")
        self.target_rse, self.max_probes = target_rse, max(max_probes, MIN_PROBES)
        self.next = min(max(first, MIN_PROBES), self.max_probes)
        self.one_probe_variance: float | None = None  # of N's relative error, averaged over measurements

    def update(self, probes: int, network_magnitude: float, stderr: float, dof: float = math.inf) -> None:
        """After a measurement with ``probes`` probes whose N had this standard error, reported widened by
        t_ν/z for ``dof`` degrees of freedom (see ``specreach.lnp.probes``): the plan takes the plain error,
        which is what falls like 1/√K (the widening shrinks by itself as K grows)."""
        if not (math.isfinite(stderr) and network_magnitude > 0):
            return  # nothing learned (an exact measurement, a vanishing N): keep the plan
        variance = (stderr / t_widening(dof) / network_magnitude) ** 2 * probes
        previous = self.one_probe_variance
        self.one_probe_variance = variance if previous is None else (
            NEWEST_WEIGHT * variance + (1 - NEWEST_WEIGHT) * previous)
        wanted = math.ceil(self.one_probe_variance / self.target_rse**2)
        self.next = min(max(wanted, MIN_PROBES), self.max_probes)

    def state_dict(self) -> dict[str, Any]:
        return {"next": self.next, "one_probe_variance": self.one_probe_variance}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next = int(state["next"])
        self.one_probe_variance = state.get("one_probe_variance")
