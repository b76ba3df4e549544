"""Every estimator against the explicit eNTK in float64, on every kind of model."""

import math

import pytest

import cases
from reference import lnp_reference
from specreach import measure_lnp

COMPONENTS = (
    "grad_dot", "loss_magnitude", "network_magnitude", "spectral_position",
    "loss_magnitude_normalized", "network_magnitude_normalized",
    "chi_loss_a", "chi_loss_b", "chi_net_a", "chi_net_b",
)


def assert_matches(result, expected, rel=1e-6):
    for name in COMPONENTS:
        assert getattr(result, name) == pytest.approx(expected[name], rel=rel, abs=1e-14), name


@pytest.mark.parametrize("case", list(cases.CASES))
@pytest.mark.parametrize("cross", [False, True], ids=["full-batch", "cross-batch"])
@pytest.mark.parametrize("estimator", ["exact", "entk"])
def test_estimator_matches_explicit_entk(float64, case, cross, estimator):
    model, loss_fn, batch_a, batch_b = cases.build(case)
    batch_b = batch_b if cross else None
    expected = lnp_reference(model, loss_fn, batch_a, batch_b)
    result = measure_lnp(model, loss_fn, batch_a, batch_b, estimator=estimator)
    assert_matches(result, expected)
    assert result.full_batch is (not cross)
    assert math.isnan(result.network_magnitude_stderr)
    assert sum(result.network_magnitude_by_group.values()) == pytest.approx(result.network_magnitude, rel=1e-9)


@pytest.mark.parametrize("case", list(cases.CASES))
def test_entk_spectrum_gives_spectral_position(float64, case):
    model, loss_fn, batch_a, _ = cases.build(case)
    result = measure_lnp(model, loss_fn, batch_a, estimator="entk")
    eigenvalues, projections = result.eigenvalues, result.projections
    assert len(eigenvalues) == len(projections) == model(batch_a[0]).numel()
    assert list(eigenvalues) == sorted(eigenvalues, reverse=True)
    assert min(eigenvalues) > -1e-9 * max(eigenvalues)  # PSD up to rounding
    assert sum(projections) == pytest.approx(1.0, rel=1e-9)
    assert sum(eigenvalues) == pytest.approx(result.network_magnitude, rel=1e-9)  # Tr Θ = N
    from_spectrum = sum(c * lam for c, lam in zip(projections, eigenvalues)) / sum(eigenvalues)
    assert from_spectrum == pytest.approx(result.spectral_position, rel=1e-6)
    assert 0 <= result.spectral_position <= max(eigenvalues) / sum(eigenvalues) + 1e-12


def test_groups_split_the_kernel_trace_by_top_level_module(float64):
    model, loss_fn, batch_a, _ = cases.build("vit")
    exact = measure_lnp(model, loss_fn, batch_a, estimator="exact")
    entk = measure_lnp(model, loss_fn, batch_a, estimator="entk")
    # timm's ViT owns cls_token and pos_embed at its root: they are groups of their own.
    assert {"cls_token", "pos_embed", "patch_embed", "blocks", "norm", "head"} <= set(exact.network_magnitude_by_group)
    for group, value in entk.network_magnitude_by_group.items():
        assert exact.network_magnitude_by_group[group] == pytest.approx(value, rel=1e-6), group


def test_frozen_parameters_are_not_part_of_the_kernel(float64):
    model, loss_fn, batch_a, _ = cases.build("random_features")
    result = measure_lnp(model, loss_fn, batch_a, estimator="exact")
    assert set(result.network_magnitude_by_group) == {"readout"}
    # f = s·aᵀφ(Wx): with θ = a only, Tr Θ = s² Σ_i ‖φ(W x_i)‖².
    x = batch_a[0]
    features = model.scale * 2**0.5 * model.features(x).clamp(min=0)
    assert result.chi_net_a == pytest.approx(float(features.square().sum()), rel=1e-12)


def test_float32_agrees_with_float64():
    model, loss_fn, batch_a, batch_b = cases.build("llama")
    result32 = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact")
    expected = lnp_reference(model.double(), loss_fn, batch_a, batch_b)
    assert_matches(result32, expected, rel=1e-4)


def test_entk_restricted_to_positions_and_output_indices(float64):
    """The kernel over a subset of token positions × vocabulary entries (paper, Figure 12)."""
    import numpy as np
    from reference import jacobian_and_output_grad

    model, loss_fn, batch_a, _ = cases.build("llama")
    positions, indices = [1, 3], [0, 2, 5, 7]
    result = measure_lnp(model, loss_fn, batch_a, estimator="entk", positions=positions, output_indices=indices)
    jacobian, output_grad = jacobian_and_output_grad(model, loss_fn, *batch_a)
    n, tokens, vocab = model(batch_a[0]).shape
    keep = np.zeros((n, tokens, vocab), dtype=bool)
    keep[np.ix_(range(n), positions, indices)] = True
    rows = np.flatnonzero(keep.reshape(-1))
    j, g = jacobian[rows], output_grad[rows]
    kernel = j @ j.T
    assert len(result.eigenvalues) == len(rows) == n * len(positions) * len(indices)
    assert result.network_magnitude == pytest.approx(float(np.trace(kernel)), rel=1e-9)
    assert result.grad_dot == pytest.approx(float(g @ kernel @ g), rel=1e-9)
    assert result.spectral_position == pytest.approx(float(g @ kernel @ g) / (g @ g) / np.trace(kernel), rel=1e-9)
    np.testing.assert_allclose(result.eigenvalues, sorted(np.linalg.eigvalsh(kernel), reverse=True),
                               rtol=1e-7, atol=1e-12)


def test_entk_restriction_out_of_range_is_refused(float64):
    model, loss_fn, batch_a, _ = cases.build("llama")
    with pytest.raises(ValueError, match=r"entk output_indices=\[99\] out of range"):
        measure_lnp(model, loss_fn, batch_a, estimator="entk", output_indices=[99])
    model, loss_fn, batch_a, _ = cases.build("mlp")
    with pytest.raises(ValueError, match="entk positions= needs outputs with a position dim"):
        measure_lnp(model, loss_fn, batch_a, estimator="entk", positions=[0])
