"""The random-feature model on the power-law teacher at initialization (math page §6)."""

import statistics

import pytest
import torch

from specreach import measure_lnp
from specreach.data.powerlaw_teacher import PowerlawTeacher
from specreach.engine.tasks import mean_squared_error
from specreach.models.parameterization import ModelRecipe, build_model
from specreach.paper.theory import arccos_kernel, expected_position, finite_width_kernel, power_law_asymptote, ratio_of_expectations

ALPHAS = (1.5, 2.0, 3.0, 4.0)
N, D, M, SEEDS = 128, 96, 768, 24


@pytest.fixture(scope="module")
def measurements():
    """Per α and seed: the measured components and the two kernel predictions for the same inputs."""
    found = {}
    for alpha in ALPHAS:
        rows = []
        for seed in range(SEEDS):
            data = PowerlawTeacher(alpha=alpha, inputs=D, features=M, feature_seed=seed, teacher_seed=100 + seed,
                                   sample_seed=200 + seed, train_size=N, validation_size=1)
            x, y = data.training_set()
            model = build_model(ModelRecipe(kind="random-features",
                                            params={"inputs": D, "features": M, "feature_seed": seed}))
            result = measure_lnp(model, mean_squared_error, (x, y), estimator="exact")  # full batch, f = 0
            rows.append({
                "L": result.loss_magnitude_normalized, "N": result.network_magnitude_normalized,
                "P": result.spectral_position,
                "finite": expected_position(finite_width_kernel(x, model.projection.weight), draws=2000, seed=seed),
                "infinite": expected_position(arccos_kernel(x), draws=2000, seed=seed),
                "shortcut": ratio_of_expectations(arccos_kernel(x)),
            })
        found[alpha] = rows
    return found


def mean(rows, key):
    return statistics.fmean(r[key] for r in rows)


def test_normalized_loss_and_network_magnitudes_do_not_depend_on_alpha(measurements):
    # Mean-MSE at f = 0 on standardized labels: L̃ = 4·Var(y) = 4; Ñ → E‖x‖² = Σλ = 1.
    for key, expected, tolerance in (("L", 4.0, 1e-9), ("N", 1.0, 0.08)):
        values = [mean(measurements[a], key) for a in ALPHAS]
        assert (max(values) - min(values)) / statistics.fmean(values) < 0.05, (key, values)
        assert statistics.fmean(values) == pytest.approx(expected, rel=tolerance)


def test_spectral_position_rises_with_alpha(measurements):
    positions = [mean(measurements[a], "P") for a in ALPHAS]
    assert positions == sorted(positions) and positions[-1] > 3 * positions[0]
    asymptotes = [power_law_asymptote(a) for a in ALPHAS]
    assert asymptotes == sorted(asymptotes)  # the scaling relation rises the same way


def test_spectral_position_agrees_with_the_kernel_prediction(measurements):
    """Given inputs and features, y ~ N(0, K) exactly, so E[P_measured] = E_z[P(K)]: the mean
    difference over seeds must be within 3 standard errors of zero (a statistical identity, no
    model error). The infinite-width (arc-cosine) prediction differs from the finite-width one
    only by O(1/sqrt(M)) kernel fluctuations: within 10 % at M = 768."""
    for alpha in ALPHAS:
        rows = measurements[alpha]
        differences = [r["P"] - r["finite"] for r in rows]
        stderr = statistics.stdev(differences) / len(differences) ** 0.5
        assert abs(statistics.fmean(differences)) < 3 * stderr, alpha
        assert mean(rows, "infinite") == pytest.approx(mean(rows, "finite"), rel=0.10), alpha
        # The ratio of expectations is the shortcut the math page warns about: it overestimates.
        assert mean(rows, "shortcut") > mean(rows, "infinite")


def test_arccos_kernel_is_the_infinite_width_limit():
    x = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weight = torch.randn(200_000, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(finite_width_kernel(x, weight), arccos_kernel(x), rtol=0.02, atol=0.02)
