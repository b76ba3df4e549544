"""The fast path proves itself: the self-check runs by default (once per model), coupled samples and
outputs the loss never reads are refused with the fix, and what the fast path used to trust — where
the samples are in a tensor, a cached parametrization, complex weights — is measured exactly.

Exact components are compared with the explicit per-output-row Jacobian in float64
(``reference.lnp_reference_masked``), which knows nothing of rules or hooks.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from reference import lnp_reference_masked
from specreach import measure_lnp
from specreach.engine.monitor import LNPMonitor, MonitorConfig
from specreach.lnp import verify as verify_module
from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.lnp.verify import SamplesCoupledError, VerificationError

COMPONENTS = ("grad_dot", "loss_magnitude", "network_magnitude", "spectral_position",
              "loss_magnitude_normalized", "network_magnitude_normalized", "chi_net_a", "chi_net_b")


def assert_matches(result, expected):
    for name in COMPONENTS:
        assert getattr(result, name) == pytest.approx(expected[name], rel=1e-9, abs=1e-14), name


def classification(n=5):
    return torch.randn(n, 4), torch.randint(0, 3, (n,))


class FunctionalBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.head(F.batch_norm(self.first(x), None, None, training=True))


class MeanOnlyNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.first(x)
        return self.head(torch.tanh(h - h.mean(dim=0)))


class InBatchNegatives(nn.Module):
    """Each sample's logits are its similarities to every sample of the batch (contrastive retrieval)."""

    def __init__(self):
        super().__init__()
        self.query, self.key = nn.Linear(4, 5), nn.Linear(4, 5)

    def forward(self, x):
        return self.query(x) @ self.key(x).T


class CoupledInValuesOnlyThroughGradients(nn.Module):
    """Values equal alone and in the batch, gradients not: x + (m − m.detach()) with m a batch mean."""

    def __init__(self):
        super().__init__()
        self.first, self.head = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.first(x)
        mean = h.mean(dim=0, keepdim=True)
        return self.head(torch.tanh(h + (mean - mean.detach())))


@pytest.mark.parametrize("model, message", [
    (FunctionalBatchNorm, "cannot run sample 0 of batch A on its own"),
    (MeanOnlyNorm, "gives other outputs alone than in the batch"),
    (InBatchNegatives, "alone has outputs of shape"),
    (CoupledInValuesOnlyThroughGradients, "depend on the other samples' values at the output of module 'first'"),
], ids=["functional-batch-norm", "mean-only-norm", "in-batch-negatives", "gradient-only-coupling"])
@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_coupled_samples_are_refused_by_a_plain_call(float64, model, message, estimator):
    torch.manual_seed(0)
    inputs = torch.randn(5, 4)
    targets = torch.randint(0, 5 if model is InBatchNegatives else 3, (5,))
    with pytest.raises(SamplesCoupledError, match=message) as refusal:
        measure_lnp(model(), F.cross_entropy, (inputs, targets), estimator=estimator)
    assert "couples the samples" in str(refusal.value) and "Make each sample's outputs depend on that sample alone" in str(refusal.value)


class ShiftingLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.mix, self.head = nn.Embedding(13, 6), nn.Linear(6, 6), nn.Linear(6, 13)

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids))))


def shifting_loss(logits, labels):
    """The Hugging Face habit: full logits, labels = input_ids, the loss shifts inside."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def shifting_batches():
    a, b = torch.randint(0, 13, (3, 5)), torch.randint(0, 13, (2, 5))
    labels_a = a.clone()
    labels_a[0, 3:] = -100  # padding at the end of one sample
    return (a, labels_a), (b, b.clone())


def read_positions(labels):
    """Position t is read when label t + 1 is not ignored; the last position never."""
    read = torch.zeros(labels.shape, dtype=torch.bool)
    read[:, :-1] = labels[:, 1:] != -100
    return read


@pytest.mark.parametrize("estimator", ["exact", "hutchinson", "entk"])
def test_outputs_the_loss_never_reads_are_refused_with_the_fix(float64, estimator):
    torch.manual_seed(0)
    batch_a, batch_b = shifting_batches()
    with pytest.raises(ValueError, match=r"the loss never reads the outputs at position 4 .*logits\[:, :-1\] and pass "
                                         r"labels\[:, 1:\].*loss_mask_a / loss_mask_b"):
        measure_lnp(ShiftingLM(), shifting_loss, batch_a, batch_b, estimator=estimator)


def test_one_sample_alone_is_enough_to_find_an_unread_position(float64):
    torch.manual_seed(0)
    ids = torch.randint(0, 13, (1, 5))
    with pytest.raises(ValueError, match="never reads the outputs at position 4"):
        measure_lnp(ShiftingLM(), shifting_loss, (ids, ids.clone()))


@pytest.mark.parametrize("estimator", ["exact", "entk"])
def test_declaring_the_read_positions_measures_the_shifting_loss_exactly(float64, estimator):
    torch.manual_seed(0)
    model = ShiftingLM().eval()
    batch_a, batch_b = shifting_batches()
    mask_a, mask_b = read_positions(batch_a[1]), read_positions(batch_b[1])
    expected = lnp_reference_masked(model, shifting_loss, batch_a, batch_b, mask_a, mask_b)
    result = measure_lnp(model, shifting_loss, batch_a, batch_b, estimator=estimator, loss_mask_a=mask_a,
                         loss_mask_b=mask_b)
    assert_matches(result, expected)
    assert result.units_a == int(mask_a.sum())


def test_a_position_read_but_with_zero_gradient_still_counts(float64):
    """A confident head that saturates at one position (g = 0 there in float) is still read."""
    model = nn.Linear(3, 4)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 800.0]))  # softmax exactly one-hot in float64
    inputs, targets = torch.randn(2, 3), torch.tensor([3, 3])
    result = measure_lnp(model, F.cross_entropy, (inputs, targets), estimator="exact")
    assert result.units_a == 2 and result.chi_loss_a == 0


class Router(nn.Module):
    """Top-1 routing by the sign of a token's first feature, dispatched by boolean masks."""

    def __init__(self):
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(3, 3) for _ in range(2))
        self.head = nn.Linear(3, 2)

    def forward(self, x):  # (n, tokens, 3)
        out = torch.zeros_like(x)
        chosen = x[..., 0] > 0
        out[chosen] = self.experts[0](x[chosen])
        out[~chosen] = self.experts[1](x[~chosen])
        return self.head(torch.tanh(out).sum(dim=1))


def test_tokens_routed_to_an_expert_as_many_as_the_samples_are_not_split_by_sample(float64):
    """4 samples of 2 tokens, 4 of them routed to expert 0 (interleaved across samples): its input has
    the batch size first but holds tokens, not samples. The fast path follows where the samples are."""
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3)
    x[..., 0] = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])  # expert 0 gets 4 tokens
    batch = (x, torch.randint(0, 2, (4,)))
    model = Router()
    expected = lnp_reference_masked(model, F.cross_entropy, batch)
    result = measure_lnp(model, F.cross_entropy, batch, estimator="exact", verify=False)
    assert_matches(result, expected)
    assert "enclosing VJP" in result.paths["experts.0.weight"]


class LoRA(nn.Module):
    def __init__(self, rows, columns, rank=2):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, columns) * 0.3)
        self.up = nn.Parameter(torch.randn(rows, rank) * 0.3)

    def forward(self, weight):
        return weight + self.up @ self.down


def test_a_parametrized_model_measured_inside_parametrize_cached_is_exact(float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    parametrize.register_parametrization(model[0], "weight", LoRA(6, 4))
    model[0].parametrizations.weight.original.requires_grad_(False)
    batch_a, batch_b = classification(5), classification(4)
    expected = lnp_reference_masked(model, F.cross_entropy, batch_a, batch_b)
    with parametrize.cached():
        result = measure_lnp(model, F.cross_entropy, batch_a, batch_b, estimator="exact")
        assert parametrize._cache_enabled == 1  # the user's cache is still on afterwards
    assert_matches(result, expected)


def test_complex_weights_enter_through_the_real_inner_product(float64):
    """D of a complex parameter is Re Σ conj(∇L_A)·∇L_B (dropping the imaginary part was 5 % off)."""
    import user_models

    model, loss_fn, batch_a, batch_b, _, _ = user_models.build("fourier_neural_operator")
    expected = lnp_reference_masked(model, loss_fn, batch_a, batch_b)
    for estimator in ("exact", "entk"):
        assert_matches(measure_lnp(model, loss_fn, batch_a, batch_b, estimator=estimator), expected)


def _gap_in_the_fast_path(monkeypatch):
    """A fast path that silently drops the last layer's weight from every probe."""
    original = PerSampleNormTape.squared_norms

    def dropping(self, outputs, vectors, skip=None):
        norms = original(self, outputs, vectors, skip)
        norms.pop("2.weight", None)
        return norms

    monkeypatch.setattr(PerSampleNormTape, "squared_norms", dropping)


def mlp():
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def test_a_plain_call_catches_a_fast_path_that_is_wrong(float64, monkeypatch):
    _gap_in_the_fast_path(monkeypatch)
    with pytest.raises(VerificationError, match=r"2 \(outputs\): fast .*reference"):
        measure_lnp(mlp(), F.cross_entropy, classification())
    # Off, the wrong number comes back: what the check is there for.
    measure_lnp(mlp(), F.cross_entropy, classification(), verify=False)


def test_the_monitor_checks_by_default(float64, monkeypatch):
    _gap_in_the_fast_path(monkeypatch)
    model = mlp()
    monitor = LNPMonitor(model, F.cross_entropy, classification(8), MonitorConfig(total_steps=4, estimator="exact",
                                                                                   schedule=[0]))
    x, y = classification()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    with pytest.raises(VerificationError):
        monitor.step(0, (x, y), loss)


def test_the_check_runs_once_per_model_and_again_when_its_parameters_change(float64, monkeypatch):
    checked = []
    original = verify_module.verify_model

    def counting(model, *args, **kwargs):
        checked.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(verify_module, "verify_model", counting)
    model = mlp()
    for _ in range(3):
        measure_lnp(model, F.cross_entropy, classification(), estimator="exact")
    assert len(checked) == 1
    measure_lnp(model, F.cross_entropy, (torch.randn(5, 4), torch.randint(0, 3, (5,))), estimator="hutchinson", probes=2)
    assert len(checked) == 1  # another batch of the same shape: still known
    model[0].weight.requires_grad_(False)  # another parameter set
    measure_lnp(model, F.cross_entropy, classification(), estimator="exact")
    assert len(checked) == 2
    measure_lnp(mlp(), F.cross_entropy, classification(), estimator="exact")  # another model
    assert len(checked) == 3
    measure_lnp(model, F.cross_entropy, classification(), estimator="entk")  # no fast path to check
    assert len(checked) == 3


def test_the_check_leaves_the_result_unchanged(float64):
    torch.manual_seed(0)
    model, batch_a, batch_b = mlp(), classification(5), classification(4)
    twin = copy.deepcopy(model)
    checked = measure_lnp(model, F.cross_entropy, batch_a, batch_b, estimator="exact")
    unchecked = measure_lnp(twin, F.cross_entropy, batch_a, batch_b, estimator="exact", verify=False)
    for name in COMPONENTS:
        assert getattr(checked, name) == getattr(unchecked, name), name
