"""powerlaw-teacher: the spectrum, the standardized labels, and the teacher recomputed independently."""

import math

import pytest
import torch
from pydantic import ValidationError

from specreach.data import PowerlawTeacher
from specreach.models.random_features import RandomFeatureModel, feature_matrix

SMALL = dict(alpha=1.3, inputs=8, features=24, feature_seed=5, teacher_seed=6, sample_seed=7, train_size=60,
             validation_size=20)


def whole_epoch(source, batch_size=10, data_seed=0):
    batches = list(source.train_batches(batch_size, data_seed))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def test_spectrum_sums_to_one_and_decays_as_a_power_law():
    spectrum = PowerlawTeacher(alpha=1.7, inputs=50).spectrum()
    k = torch.arange(1, 51, dtype=torch.float64)
    assert spectrum.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(spectrum / spectrum[0], k ** -1.7, rtol=1e-12)


def test_input_variances_are_the_spectrum():
    """Per-coordinate variance of x over 40 000 draws matches λ_k (standard error √(2/n) ≈ 0.7 %)."""
    source = PowerlawTeacher(alpha=2.0, inputs=10, features=4, train_size=40_000, validation_size=1)
    x, _ = source.training_set()
    assert torch.allclose(x.double().var(dim=0), source.spectrum(), rtol=0.04, atol=0)


def test_training_labels_are_standardized():
    x, y = whole_epoch(PowerlawTeacher(**SMALL))
    assert y.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert y.var(correction=0).item() == pytest.approx(1.0, rel=1e-5)


def test_labels_equal_an_independent_recomputation_of_the_teacher():
    source = PowerlawTeacher(**SMALL)
    x, y = whole_epoch(source)
    x_val, y_val = source.validation_pool()

    weight = feature_matrix(inputs=8, features=24, seed=5).double()
    teacher = torch.randn(24, generator=torch.Generator().manual_seed(6)).double()

    def raw(inputs):
        return (math.sqrt(2.0) * torch.clamp(inputs.double() @ weight.T, min=0)) @ teacher / math.sqrt(24)

    mean, std = raw(x).mean(), raw(x).std(correction=0)  # statistics of the training set only
    assert torch.allclose(y.squeeze(1).double(), (raw(x) - mean) / std, atol=1e-5)
    assert torch.allclose(y_val.squeeze(1).double(), (raw(x_val) - mean) / std, atol=1e-5)
    assert source.label_statistics() == pytest.approx((mean.item(), std.item()), rel=1e-6)


def test_the_teacher_is_a_student_with_the_same_feature_seed():
    """The random-feature model built with feature_seed, readout set to a*, outputs the raw labels."""
    source = PowerlawTeacher(**SMALL)
    model = RandomFeatureModel(inputs=8, features=24, feature_seed=5)
    with torch.no_grad():
        model.readout.weight.copy_(source.teacher_coefficients().unsqueeze(0))
    x, y = source.training_set()
    mean, std = source.label_statistics()
    with torch.no_grad():
        assert torch.allclose((model(x) - mean) / std, y, atol=1e-5)


def test_one_batch_of_train_size_is_the_whole_training_set():
    source = PowerlawTeacher(**SMALL)
    (batch,) = list(source.train_batches(SMALL["train_size"], data_seed=11))
    x, y = source.training_set()
    order = [x.tolist().index(row) for row in batch[0].tolist()]
    assert sorted(order) == list(range(SMALL["train_size"]))
    assert torch.equal(batch[1], y[order])


def test_validation_pool_depends_on_the_sample_seed_only():
    pool = PowerlawTeacher(**SMALL).validation_pool()[0]
    assert torch.equal(pool, PowerlawTeacher(**{**SMALL, "train_size": 30}).validation_pool()[0])
    assert not torch.equal(pool, PowerlawTeacher(**{**SMALL, "sample_seed": 8}).validation_pool()[0])


def test_training_and_validation_inputs_are_distinct_draws():
    source = PowerlawTeacher(**SMALL)
    train = {tuple(row) for row in source.training_set()[0].tolist()}
    assert train.isdisjoint(tuple(row) for row in source.validation_pool()[0].tolist())


def test_info_and_shapes():
    source = PowerlawTeacher(**SMALL)
    info = source.info()
    assert (info.task, info.input_shape, info.train_samples) == ("regression", (8,), 60)
    x, y = source.training_set()
    assert x.shape == (60, 8) and y.shape == (60, 1) and x.dtype == y.dtype == torch.float32


@pytest.mark.parametrize("bad", [{"alpha": 0}, {"alpha": -1.0}, {"inputs": 0}, {"features": 0}, {"train_size": 1},
                                 {"sample_seed": -1}])
def test_invalid_parameters(bad):
    with pytest.raises(ValidationError):
        PowerlawTeacher(**bad)


def test_batches_are_full_and_the_leftover_samples_change_with_the_seed():
    source = PowerlawTeacher(**SMALL)  # 60 samples, batches of 7: 8 full batches, 4 left over
    x, _ = source.training_set()

    def left_over(seed):
        used = {tuple(row) for batch, _ in source.train_batches(7, data_seed=seed) for row in batch.tolist()}
        assert len(used) == 56
        return {index for index, row in enumerate(x.tolist()) if tuple(row) not in used}

    assert len(left_over(0)) == 4 and left_over(0) != left_over(1)
    assert list(source.train_batches(61, data_seed=0)) == []
