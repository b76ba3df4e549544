"""Adaptive K inside training (MonitorConfig.target_rse, measure.target_rse): each measurement's K is
planned from the previous one's error, and every reported standard error stays honest."""

from __future__ import annotations

import math

import pytest

import cases
from specreach import LNPMonitor, measure_lnp
from specreach.engine import MonitorConfig
from specreach.engine.probe_plan import MIN_PROBES
from specreach.lnp.probes import t_widening


def _monitor_at_fixed_weights(case: str, target: float, measurements: int, first: int = 8, cap: int = 32):
    """Measurements of one model at the same weights (no update), A the same samples each time, B = A."""
    model, loss_fn, batch_a, _ = cases.build(case)
    monitor = LNPMonitor(model, loss_fn, batch_a, MonitorConfig(
        total_steps=measurements, schedule=list(range(measurements)), probes=first, target_rse=target,
        max_probes=cap, cross_batch=False, fixed_batch=True, batch_size=batch_a[1].shape[0]))
    results = []
    for step in range(measurements):
        model.zero_grad()
        loss_fn(model(batch_a[0]), batch_a[1]).backward()
        results.append(monitor.step(step, batch_a, 0.0))
    exact = measure_lnp(model, loss_fn, batch_a, estimator="exact")
    return results, exact


def test_each_k_reaches_the_target_with_the_one_probe_error_averaged_so_far(float64):
    results, _ = _monitor_at_fixed_weights("llama", target=0.05, measurements=8)
    assert results[0].probes == 8
    average = None
    for before, after in zip(results, results[1:]):
        dof = before.chi_net_a_dof if before.full_batch else min(before.chi_net_a_dof, before.chi_net_b_dof)
        one_probe = (before.network_magnitude_stderr / t_widening(dof) / before.network_magnitude) ** 2 * before.probes
        average = one_probe if average is None else (one_probe + average) / 2
        assert after.probes == min(max(math.ceil(average / 0.05**2), MIN_PROBES), 32)
        assert after.extras["probes_a"] == after.probes
    assert len({r.probes for r in results}) > 1  # the plan moved


@pytest.mark.slow
def test_planned_k_keeps_two_standard_errors_covering_the_truth(float64):
    """K is chosen before its probes are drawn, so ±2 SE covers about 95 % as at a fixed K. (Stopping once
    a measurement's own estimate looks precise enough would not: it stops on the draws that understate
    the error.) 300 measurements: a binomial SE of 1.3 %, so [0.3 %, 10 %] fails only for a real miss."""
    results, exact = _monitor_at_fixed_weights("mlp", target=0.2, measurements=300, first=4, cap=16)
    misses = sum(abs(r.network_magnitude - exact.network_magnitude) > 2 * r.network_magnitude_stderr for r in results)
    assert 0.003 <= misses / 300 <= 0.10, misses
    used = [r.probes for r in results]
    assert min(used) < max(used)  # K varied with the draws, and the coverage held anyway


def test_the_plan_survives_a_checkpoint(float64):
    model, loss_fn, batch_a, _ = cases.build("mlp")
    config = MonitorConfig(total_steps=4, schedule=[0, 1, 2, 3], probes=8, target_rse=0.3, cross_batch=False,
                           fixed_batch=True, batch_size=5)
    first = LNPMonitor(model, loss_fn, batch_a, config)
    loss_fn(model(batch_a[0]), batch_a[1]).backward()
    first.step(0, batch_a, 0.0)
    resumed = LNPMonitor(model, loss_fn, batch_a, config)
    resumed.load_state_dict(first.state_dict())
    assert resumed.probe_plan.next == first.probe_plan.next != 8
    assert resumed.step(1, batch_a, 0.0).probes == first.step(1, batch_a, 0.0).probes
