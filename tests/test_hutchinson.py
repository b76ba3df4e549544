"""The Hutchinson estimator is unbiased and its standard error is honest."""

import statistics

import pytest
import torch

import cases
from specreach import measure_lnp


@pytest.mark.parametrize("case", ["mlp", "llama"])
def test_unbiased_with_honest_standard_error(float64, case):
    model, loss_fn, batch_a, _ = cases.build(case)
    exact = measure_lnp(model, loss_fn, batch_a, estimator="exact").chi_net_a
    generator = torch.Generator().manual_seed(1234)
    runs = [measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=4, generator=generator)
            for _ in range(300)]
    estimates = [r.chi_net_a for r in runs]
    reported = statistics.fmean(r.chi_net_a_stderr for r in runs)
    spread = statistics.stdev(estimates)
    assert spread / reported == pytest.approx(1.0, rel=0.5)  # honest: within a factor 1.5
    mean_stderr = spread / len(estimates) ** 0.5
    assert abs(statistics.fmean(estimates) - exact) < 3 * mean_stderr


def test_probes_come_from_the_generator_only(float64):
    model, loss_fn, batch_a, batch_b = cases.build("llama")
    first = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="hutchinson",
                        generator=torch.Generator().manual_seed(7))
    second = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="hutchinson",
                         generator=torch.Generator().manual_seed(7))
    other = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="hutchinson",
                        generator=torch.Generator().manual_seed(8))
    assert first == second
    assert other.network_magnitude != first.network_magnitude
    assert first.probes == 8  # the documented default


def test_components_without_probe_noise_are_exact(float64):
    """D and L need no probes: Hutchinson reports them exactly, with no standard error on them."""
    model, loss_fn, batch_a, batch_b = cases.build("mlp")
    exact = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact")
    hutch = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="hutchinson", probes=3,
                        generator=torch.Generator().manual_seed(0))
    assert hutch.grad_dot == pytest.approx(exact.grad_dot, rel=1e-12)
    assert hutch.loss_magnitude == pytest.approx(exact.loss_magnitude, rel=1e-12)
    assert hutch.network_magnitude_stderr > 0 and hutch.spectral_position_stderr > 0
    # P = D/(L N) carries N's relative error.
    assert hutch.spectral_position_stderr / abs(hutch.spectral_position) == pytest.approx(
        hutch.network_magnitude_stderr / hutch.network_magnitude, rel=1e-12)


def test_single_probe_has_no_standard_error(float64):
    model, loss_fn, batch_a, _ = cases.build("mlp")
    result = measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=1,
                         generator=torch.Generator().manual_seed(0))
    assert result.chi_net_a > 0
    assert result.chi_net_a_stderr != result.chi_net_a_stderr  # NaN
