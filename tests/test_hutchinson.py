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


@pytest.mark.parametrize("case", ["mlp", "llama"])
@pytest.mark.parametrize("probes", [2, 8])
def test_two_standard_errors_cover_as_promised(float64, case, probes):
    """Over 300 independent draws, the truth lies outside ±2 reported SE about 4.6 % of the time.

    With K = 2 the plain SE (from the per-sample variances alone) missed 15–18 % of the time on
    these models; the t_ν/z widening brings it to nominal. Bounds: 300 draws give a binomial
    standard error of 1.2 %, so [0.3 %, 9 %] fails only for a real miscalibration.
    """
    model, loss_fn, batch_a, _ = cases.build(case)
    exact = measure_lnp(model, loss_fn, batch_a, estimator="exact").chi_net_a
    generator = torch.Generator().manual_seed(11)
    misses = 0
    for _ in range(300):
        result = measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=probes, generator=generator)
        misses += abs(result.chi_net_a - exact) > 2 * result.chi_net_a_stderr
        assert result.chi_net_a_dof > 0
    assert 0.003 <= misses / 300 <= 0.09, misses


def test_plain_hutchinson_probes_through_the_head(float64):
    """readout='probed': no closed-form head share, still unbiased, and noisier than the default."""
    model, loss_fn, batch_a, _ = cases.build("llama")
    exact = measure_lnp(model, loss_fn, batch_a, estimator="exact").chi_net_a
    plain = measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=64, readout="probed",
                        generator=torch.Generator().manual_seed(5))
    default = measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=64,
                          generator=torch.Generator().manual_seed(5))
    assert abs(plain.chi_net_a - exact) < 4 * plain.chi_net_a_stderr
    assert not any(path.startswith("closed form") for path in plain.paths.values())
    assert default.paths["output.weight"].startswith("closed form of the linear readout 'output'")
    assert plain.chi_net_a_stderr > default.chi_net_a_stderr


def test_adaptive_probes_stop_at_the_target_error(float64):
    model, loss_fn, batch_a, batch_b = cases.build("llama")
    exact = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact")
    result = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="hutchinson", probes=2, target_rse=0.02,
                         max_probes=400, generator=torch.Generator().manual_seed(2))
    for which in ("a", "b"):
        used = result.extras[f"probes_{which}"]
        value, stderr = getattr(result, f"chi_net_{which}"), getattr(result, f"chi_net_{which}_stderr")
        assert 2 < used < 400 and stderr <= 0.02 * value
        assert abs(value - getattr(exact, f"chi_net_{which}")) < 4 * stderr
    capped = measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=2, target_rse=1e-6,
                         max_probes=5, generator=torch.Generator().manual_seed(2))
    assert capped.extras["probes_a"] == 5
    plain = measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=3)
    assert plain.extras["probes_a"] == 3


class SharedBias(torch.nn.Module):
    """f_t = x_t + b at every position t: b's per-sample kernel is T·(u uᵀ) ⊗ I, all of it along the
    constant-over-positions direction u."""

    def __init__(self, width):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(width))

    def forward(self, x):
        return x + self.bias


def test_reflected_probes_are_an_orthonormal_basis_with_the_constant_direction():
    from specreach.lnp.probes import position_reflection, reflect

    positions = 7
    v = position_reflection(torch.Size([3, positions, 4]), torch.zeros((), dtype=torch.float64))
    # H applied to the identity's columns, each put in a (1, positions, 1) probe.
    reflection = torch.stack([reflect(column.reshape(1, positions, 1), v).reshape(-1)
                              for column in torch.eye(positions, dtype=torch.float64)], dim=1)
    assert torch.allclose(reflection.T @ reflection, torch.eye(positions, dtype=torch.float64), atol=1e-14)
    assert torch.allclose(reflection[:, 0], torch.full((positions,), positions ** -0.5, dtype=torch.float64))
    assert position_reflection(torch.Size([3, 4]), torch.zeros(())) is None  # no positions
    assert position_reflection(torch.Size([3, 1, 4]), torch.zeros(())) is None


def test_reflection_takes_the_constant_over_positions_part_out_of_the_variance(float64):
    """A bias shared by every position: reflected probes measure its χ_net exactly (zero spread), plain
    Rademacher probes do not; both are unbiased."""
    n, positions, width = 4, 6, 3
    inputs = torch.randn(n, positions, width)
    batch = (inputs, torch.randn(n, positions, width))
    truth = n * positions * width  # ‖∂f_i/∂b‖_F² = T·width per sample
    reflected = measure_lnp(SharedBias(width), torch.nn.functional.mse_loss, batch, estimator="hutchinson",
                            probes=4, generator=torch.Generator().manual_seed(0))
    assert reflected.chi_net_a == pytest.approx(truth, rel=1e-12)
    assert reflected.chi_net_a_stderr == pytest.approx(0.0, abs=1e-9)
    plain = [measure_lnp(SharedBias(width), torch.nn.functional.mse_loss, batch, estimator="hutchinson", probes=4,
                         positions="independent", generator=torch.Generator().manual_seed(seed))
             for seed in range(200)]
    estimates = [r.chi_net_a for r in plain]
    assert statistics.stdev(estimates) > 0.1 * truth
    assert abs(statistics.fmean(estimates) - truth) < 4 * statistics.stdev(estimates) / len(estimates) ** 0.5


def test_plain_signs_at_every_position_are_unbiased_too(float64):
    """positions='independent' (the reflected default is covered by the tests above)."""
    model, loss_fn, batch_a, _ = cases.build("llama")
    exact = measure_lnp(model, loss_fn, batch_a, estimator="exact").chi_net_a
    generator = torch.Generator().manual_seed(3)
    runs = [measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=4, positions="independent",
                        generator=generator) for _ in range(150)]
    estimates = [r.chi_net_a for r in runs]
    assert abs(statistics.fmean(estimates) - exact) < 4 * statistics.stdev(estimates) / len(estimates) ** 0.5
