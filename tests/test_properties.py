"""The mathematical properties on the math page: bounds and invariances."""

import math

import pytest
import torch

import cases
from specreach import measure_lnp


@pytest.mark.parametrize("case", list(cases.CASES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectral_position_bounds(float64, case, seed):
    model, loss_fn, batch_a, batch_b = cases.build(case, seed)
    full = measure_lnp(model, loss_fn, batch_a, estimator="exact")
    cross = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact")
    assert 0 <= full.spectral_position <= 1
    assert -1 <= cross.spectral_position <= 1
    for r in (full, cross):
        assert r.loss_magnitude * r.network_magnitude * r.spectral_position == pytest.approx(r.grad_dot, rel=1e-12)
        assert (r.loss_magnitude_normalized * r.network_magnitude_normalized * r.spectral_position
                == pytest.approx(r.grad_dot, rel=1e-12))


def test_full_batch_is_cross_batch_with_itself(float64):
    model, loss_fn, batch_a, _ = cases.build("mlp")
    full = measure_lnp(model, loss_fn, batch_a, estimator="exact")
    same = measure_lnp(model, loss_fn, batch_a, batch_a, estimator="exact")
    for name in ("grad_dot", "loss_magnitude", "network_magnitude", "spectral_position"):
        assert getattr(same, name) == pytest.approx(getattr(full, name), rel=1e-12)
    assert full.loss_magnitude == pytest.approx(full.chi_loss_a)  # L = ‖g‖² full batch


@pytest.mark.parametrize("estimator", ["exact", "entk"])
def test_scaling_the_loss(float64, estimator):
    model, loss_fn, batch_a, batch_b = cases.build("mlp")
    c = 3.5
    base = measure_lnp(model, loss_fn, batch_a, batch_b, estimator=estimator)
    scaled = measure_lnp(model, lambda o, y: c * loss_fn(o, y), batch_a, batch_b, estimator=estimator)
    assert scaled.grad_dot == pytest.approx(c**2 * base.grad_dot, rel=1e-10)
    assert scaled.loss_magnitude == pytest.approx(c**2 * base.loss_magnitude, rel=1e-10)
    assert scaled.network_magnitude == pytest.approx(base.network_magnitude, rel=1e-10)
    assert scaled.spectral_position == pytest.approx(base.spectral_position, rel=1e-10)


def test_scaling_the_kernel(float64):
    """At f = 0 (zero readout), scaling the network output scales Θ by s² and leaves g, so P is unchanged."""
    model, loss_fn, batch_a, batch_b = cases.build("random_features")
    with torch.no_grad():
        model.readout.weight.zero_()
    base = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact")
    model.scale *= 10
    scaled = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact")
    assert scaled.network_magnitude == pytest.approx(100 * base.network_magnitude, rel=1e-10)
    assert scaled.loss_magnitude == pytest.approx(base.loss_magnitude, rel=1e-12)
    assert scaled.spectral_position == pytest.approx(base.spectral_position, rel=1e-10)


def test_units_default_to_target_elements_and_can_be_overridden(float64):
    model, loss_fn, batch_a, batch_b = cases.build("llama")  # targets (3, 5) and (2, 5): tokens
    result = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact")
    assert (result.units_a, result.units_b) == (15, 10)
    assert result.loss_magnitude_normalized == pytest.approx(result.loss_magnitude * math.sqrt(150))
    custom = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact", units_a=4, units_b=9)
    assert custom.network_magnitude_normalized == pytest.approx(custom.network_magnitude / 6)


def test_zero_gradient_gives_nan_position(float64):
    model, loss_fn, batch_a, _ = cases.build("random_features")
    x = batch_a[0]
    with torch.no_grad():
        targets = model(x).clone()  # a perfect fit: the loss gradient is exactly zero
    result = measure_lnp(model, loss_fn, (x, targets), estimator="exact")
    assert result.grad_dot == 0 and result.loss_magnitude == 0
    assert math.isnan(result.spectral_position)
    assert result.network_magnitude > 0


def test_result_is_immutable(float64):
    model, loss_fn, batch_a, _ = cases.build("mlp")
    result = measure_lnp(model, loss_fn, batch_a)
    with pytest.raises(AttributeError):
        result.spectral_position = 0.5
    with pytest.raises(TypeError):
        result.network_magnitude_by_group["0"] = 1.0
    assert isinstance(result.as_dict()["spectral_position"], float)


@pytest.mark.parametrize("loss_fn, expected_units", [
    (torch.nn.functional.mse_loss, 5 * 4),  # elementwise: one unit per element
    (torch.nn.functional.binary_cross_entropy_with_logits, 5 * 4),
    (torch.nn.functional.cross_entropy, 5),  # one term per class distribution, as with class indices
    (lambda o, t: torch.nn.functional.kl_div(o.log_softmax(-1), t, reduction="batchmean"), 5),
])
def test_units_of_targets_shaped_like_the_outputs_follow_the_loss(float64, loss_fn, expected_units):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    inputs, targets = torch.randn(5, 3), torch.rand(5, 4).softmax(-1)
    assert measure_lnp(model, loss_fn, (inputs, targets), estimator="exact").units_a == expected_units


def test_one_hot_soft_labels_measure_like_class_indices(float64):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    inputs, labels = torch.randn(6, 3), torch.randint(0, 4, (6,))
    hard = measure_lnp(model, torch.nn.functional.cross_entropy, (inputs, labels), estimator="exact")
    soft = measure_lnp(model, torch.nn.functional.cross_entropy,
                       (inputs, torch.nn.functional.one_hot(labels, 4).double()), estimator="exact")
    for name in ("grad_dot", "loss_magnitude_normalized", "network_magnitude_normalized", "spectral_position"):
        assert getattr(soft, name) == pytest.approx(getattr(hard, name), rel=1e-12), name
