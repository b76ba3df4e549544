"""Bad input gets a clear error that says what and why."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cases
from specreach import measure_lnp


@pytest.fixture
def mlp():
    return cases.build("mlp")


def test_non_finite_outputs(mlp):
    model, loss_fn, (x, y), _ = mlp
    x = x.clone()
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="outputs on batch A contain NaN or Inf"):
        measure_lnp(model, loss_fn, (x, y))


def test_non_finite_loss(mlp):
    model, _, batch_a, _ = mlp
    with pytest.raises(ValueError, match="loss on batch A is inf"):
        measure_lnp(model, lambda o, y: F.cross_entropy(o, y) * float("inf"), batch_a)


def test_empty_batch(mlp):
    model, loss_fn, _, batch_b = mlp
    with pytest.raises(ValueError, match="batch_a is empty"):
        measure_lnp(model, loss_fn, (torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)), batch_b)


def test_batch_not_a_pair(mlp):
    model, loss_fn, (x, _), _ = mlp
    with pytest.raises(TypeError, match=r"batch_a must be a pair \(inputs, targets\)"):
        measure_lnp(model, loss_fn, x)


def test_loss_not_a_scalar(mlp):
    model, _, batch_a, _ = mlp
    with pytest.raises(ValueError, match="scalar .* reduction='mean'"):
        measure_lnp(model, lambda o, y: F.cross_entropy(o, y, reduction="none"), batch_a)


def test_no_trainable_parameters(mlp):
    model, loss_fn, batch_a, _ = mlp
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        measure_lnp(model, loss_fn, batch_a)


def test_unknown_estimator_suggests_or_lists_the_registered_ones(mlp):
    """Whatever plugins are installed: a near miss gets a did-you-mean, anything else the full list."""
    from specreach.plugins import get_plugin_manager

    model, loss_fn, batch_a, _ = mlp
    with pytest.raises(ValueError, match=r"unknown estimator 'exakt' \(did you mean 'exact'\?\)"):
        measure_lnp(model, loss_fn, batch_a, estimator="exakt")
    registered = ", ".join(get_plugin_manager().estimators())
    assert {"entk", "exact", "hutchinson"} <= set(registered.split(", "))
    with pytest.raises(ValueError) as raised:
        measure_lnp(model, loss_fn, batch_a, estimator="zzzz")
    assert str(raised.value) == f"unknown estimator 'zzzz' (registered: {registered})"


@pytest.mark.parametrize("probes", [0, -3, 1.5])
def test_probes_must_be_positive(mlp, probes):
    model, loss_fn, batch_a, _ = mlp
    with pytest.raises(ValueError, match="probes must be a positive integer"):
        measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=probes)


def test_probes_for_an_estimator_without_probes(mlp):
    model, loss_fn, batch_a, _ = mlp
    with pytest.raises(ValueError, match="'exact' draws no probes"):
        measure_lnp(model, loss_fn, batch_a, estimator="exact", probes=4)


def test_exact_refuses_large_outputs_and_suggests_hutchinson():
    model, loss_fn, batch_a, _ = cases.build("llama")  # probes live on the head input: 5 tokens × 8 hidden = 40
    with pytest.raises(ValueError, match="40 per sample for this model.*use estimator=.hutchinson."):
        measure_lnp(model, loss_fn, batch_a, estimator="exact", max_outputs=39)


def test_unknown_estimator_option(mlp):
    model, loss_fn, batch_a, _ = mlp
    with pytest.raises(ValueError, match="max_output"):
        measure_lnp(model, loss_fn, batch_a, estimator="exact", max_output=5)


def test_entk_refuses_a_kernel_that_does_not_fit_and_says_how_big(mlp):
    model, loss_fn, batch_a, _ = mlp
    # Batch A: 5 samples × 3 classes = 15 rows; with B the kernels are 15 × 30.
    with pytest.raises(ValueError, match=r"30 output rows × 99 parameters and a 15 × 30 kernel: about [0-9.]+ KiB, over max_memory_gb"):
        measure_lnp(model, loss_fn, batch_a, batch_a, estimator="entk", max_memory_gb=1e-9)


def test_model_returning_a_tuple(mlp):
    _, loss_fn, batch_a, _ = mlp

    class TupleModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(6, 3)

        def forward(self, x):
            return self.linear(x), x

    with pytest.raises(TypeError, match="returned tuple on batch A"):
        measure_lnp(TupleModel(), loss_fn, batch_a)


def test_in_place_changes_of_recorded_outputs_are_measured_correctly(mlp):
    """An in-place ReLU after a layer, and an in-place sum on a layer's output: both would destroy the
    layer's output gradient; the measurement runs the first out of place and gives the second a copy."""
    from reference import lnp_reference

    _, loss_fn, batch_a, _ = mlp

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):
            h = self.act(self.first(x))
            y = self.second(h)
            y += h  # in place, on the second layer's own output
            return self.out(y)

    torch.manual_seed(0)
    model = Residual().double()
    batch = tuple(t.double() if t.is_floating_point() else t for t in batch_a)
    expected = lnp_reference(model, loss_fn, batch)
    result = measure_lnp(model, loss_fn, batch)
    assert result.network_magnitude == pytest.approx(expected["network_magnitude"], rel=1e-9)
    assert model.act.inplace  # restored


class CachesItsScaledWeight(torch.nn.Module):
    """Keeps a tensor computed from its parameter from one forward to the next (as timm's LeViT keeps its
    attention biases in eval mode): the second backward through it finds the graph freed."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 3)
        self.cache = None

    def forward(self, x):
        if self.cache is None:
            self.cache = 2 * self.linear.weight
        return x @ self.cache.T


def test_a_parameter_tensor_cached_across_forwards_is_refused_with_the_fix():
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="reuses a tensor that an earlier forward computed from the parameters"):
        measure_lnp(CachesItsScaledWeight(), F.cross_entropy, (x, y))
