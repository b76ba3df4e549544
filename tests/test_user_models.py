"""Models people bring: every estimator against the explicit float64 eNTK, or a clear refusal.

The reference (``reference.lnp_reference_masked``) is a plain autograd loop over the counted
output coordinates, on the model in eval mode: it knows nothing of hooks, layer rules, tying or
parametrizations.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import user_models
from reference import lnp_reference_masked
from specreach import measure_lnp, measure_lnp_at_step
from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.models.llama import Llama, LlamaConfig
from specreach.lnp.verify import SamplesCoupledError, VerificationError, verify_model

COMPONENTS = (
    "grad_dot", "loss_magnitude", "network_magnitude", "spectral_position",
    "loss_magnitude_normalized", "network_magnitude_normalized",
    "chi_loss_a", "chi_loss_b", "chi_net_a", "chi_net_b",
)


#: Cases torch.func cannot transform, so the explicit eNTK refuses them with a clear error.
ENTK_CANNOT_TRANSFORM = {"activation_checkpointing": "activation checkpointing"}


def reference(model, loss_fn, batch_a, batch_b, mask_a, mask_b):
    training = [m.training for m in model.modules()]
    model.eval()
    try:
        return lnp_reference_masked(model, loss_fn, batch_a, batch_b, mask_a, mask_b)
    finally:
        for module, mode in zip(model.modules(), training):
            module.training = mode


def build(case, cross):
    model, loss_fn, a, b, mask_a, mask_b = user_models.build(case)
    return model, loss_fn, a, (b if cross else None), mask_a, (mask_b if cross else None)


@pytest.mark.parametrize("case", list(user_models.CASES))
@pytest.mark.parametrize("cross", [False, True], ids=["full-batch", "cross-batch"])
@pytest.mark.parametrize("estimator", ["exact", "entk"])
def test_matches_the_explicit_entk(float64, case, cross, estimator):
    model, loss_fn, batch_a, batch_b, mask_a, mask_b = build(case, cross)
    expected = reference(model, loss_fn, batch_a, batch_b, mask_a, mask_b)
    if estimator == "entk" and case in ENTK_CANNOT_TRANSFORM:
        with pytest.raises(ValueError, match=ENTK_CANNOT_TRANSFORM[case]):
            measure_lnp(model, loss_fn, batch_a, batch_b, estimator=estimator)
        return
    result = measure_lnp(model, loss_fn, batch_a, batch_b, estimator=estimator)
    for name in COMPONENTS:
        assert getattr(result, name) == pytest.approx(expected[name], rel=1e-6, abs=1e-14), name


@pytest.mark.parametrize("case", list(user_models.CASES))
def test_hutchinson_is_unbiased_on_it(float64, case):
    model, loss_fn, batch_a, batch_b, mask_a, mask_b = build(case, cross=True)
    expected = reference(model, loss_fn, batch_a, batch_b, mask_a, mask_b)
    result = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="hutchinson", probes=64,
                         generator=torch.Generator().manual_seed(3))
    for which in ("a", "b"):
        value, stderr = getattr(result, f"chi_net_{which}"), getattr(result, f"chi_net_{which}_stderr")
        truth = expected[f"chi_net_{which}"]
        if stderr == 0:  # everything in closed form
            assert value == pytest.approx(truth, rel=1e-9)
        else:
            assert abs(value - truth) / stderr < 4, (which, value, truth, stderr)
    assert result.grad_dot == pytest.approx(expected["grad_dot"], rel=1e-9)


@pytest.mark.parametrize("case", list(user_models.CASES))
def test_self_check_agrees_on_it(float64, case):
    model, loss_fn, batch_a, _, mask_a, _ = build(case, cross=False)
    report = verify_model(model, loss_fn, batch_a)
    assert report.ok
    assert report.groups["outputs"]  # something was compared


def test_paths_say_where_each_parameter_was_seen(float64):
    model, loss_fn, batch_a, _, _, _ = build("nanogpt_tied", cross=False)
    paths = measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=2).paths
    assert paths["wte.weight"] == "op rules: embedding (embedding in 'wte') + linear (matmul in '<NanoGPTTied model>')"
    assert paths["block.1.weight"].startswith("Linear layer rule")
    model, loss_fn, batch_a, _, _, _ = build("vit_more_classes_than_width", cross=False)
    paths = measure_lnp(model, loss_fn, batch_a).paths
    assert paths["cls_token"] == "op rules: broadcast (expand in '<ViT model>')"
    assert paths["pos_embed"] == "op rules: broadcast (add in '<ViT model>')"
    assert paths["head.weight"].startswith("closed form of the linear readout 'head'")
    model, loss_fn, batch_a, _, _, _ = build("forward_bypass", cross=False)
    assert measure_lnp(model, loss_fn, batch_a).paths["inner.weight"] == "op rules: linear (linear in '<ForwardBypass model>')"
    model, loss_fn, batch_a, _, _, _ = build("functional_ops", cross=False)
    paths = measure_lnp(model, loss_fn, batch_a).paths
    assert paths["table"] == "op rules: embedding (embedding in '<FunctionalOps model>')"
    assert paths["proj"] == "op rules: matmul (matmul in '<FunctionalOps model>')"
    assert paths["shift"] == "op rules: broadcast (sub in '<FunctionalOps model>')"
    assert paths["scale"] == "op rules: broadcast (mul in '<FunctionalOps model>')"
    model, loss_fn, batch_a, _, _, _ = build("flattened_rows", cross=False)
    paths = measure_lnp(model, loss_fn, batch_a).paths
    assert paths["norm.weight"] == "LayerNorm layer rule of 'norm'"  # rows of the flattened batch
    assert paths["mix.weight"] == "Linear layer rule of 'mix'"
    assert paths["head.weight"].startswith("closed form of the linear readout 'head'")
    model, loss_fn, batch_a, _, _, _ = build("interleaved_rows", cross=False)
    assert measure_lnp(model, loss_fn, batch_a).paths["mix.weight"].startswith("enclosing VJP")
    model, loss_fn, batch_a, _, _, _ = build("multihead_attention", cross=False)
    paths = measure_lnp(model, loss_fn, batch_a).paths
    # The attention returns a tuple, so the enclosing per-sample call is the model itself.
    assert paths["attention.out_proj.weight"].startswith("enclosing VJP of '<AttentionNet model>'")
    model, loss_fn, batch_a, _, _, _ = build("weight_norm", cross=False)
    paths = measure_lnp(model, loss_fn, batch_a).paths
    assert paths["hidden.parametrizations.weight.original0"].startswith("enclosing VJP of 'hidden'")
    model, loss_fn, batch_a, _, _, _ = build("unused_parameters", cross=False)
    paths = measure_lnp(model, loss_fn, batch_a).paths
    assert paths["spare.weight"].startswith("unused")
    model, loss_fn, batch_a, _, _, _ = user_models.padded_lm_ignored_targets()[:4] + (None, None)
    paths = measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", probes=2).paths
    assert paths["embed.weight"].startswith("Embedding layer rule")


def test_ignored_positions_are_not_samples(float64):
    model, loss_fn, batch_a, batch_b, mask_a, mask_b = user_models.build("padded_lm_ignored_targets")
    result = measure_lnp(model, loss_fn, batch_a, batch_b)
    assert result.units_a == int(mask_a.sum()) < batch_a[1].numel()
    # Counting them anyway (ignore_index=None) measures a larger kernel: the default differs from it.
    counted = measure_lnp(model, loss_fn, batch_a, batch_b, ignore_index=None)
    assert counted.chi_net_a > result.chi_net_a * 1.05
    # An explicit mask gives the same as the inferred one.
    masked = measure_lnp(model, loss_fn, batch_a, batch_b, ignore_index=None, loss_mask_a=mask_a, loss_mask_b=mask_b)
    assert masked.network_magnitude == pytest.approx(result.network_magnitude, rel=1e-12)


def test_ignored_targets_that_do_not_line_up_with_the_outputs_are_refused(float64):
    """Classes in dim 1 ((batch, classes, tokens)): the ignored positions cannot be left out of the
    outputs by a mask over their leading dims, so the measurement refuses and names the layout to use."""
    model, _, batch_a, batch_b, _, _ = user_models.padded_lm_ignored_targets()
    with pytest.raises(ValueError, match=r"targets of shape \(3, 5\) do not line up .* positions leading"):
        measure_lnp(user_models.ClassesInDim1(), F.cross_entropy, batch_a, batch_b)


def test_a_mask_that_hides_used_positions_is_refused(float64):
    model, loss_fn, batch_a, _, _, _ = user_models.build("nanogpt_tied")
    mask = torch.ones_like(batch_a[1], dtype=torch.bool)
    mask[0, 0] = False
    with pytest.raises(ValueError, match="still have a nonzero loss gradient"):
        measure_lnp(model, loss_fn, batch_a, loss_mask_a=mask)


def test_dropout_is_measured_as_the_deterministic_function(float64):
    model, loss_fn, batch_a, batch_b, _, _ = user_models.build("dropout_mlp")
    assert model.training
    first = measure_lnp(model, loss_fn, batch_a, batch_b)
    second = measure_lnp(model, loss_fn, batch_a, batch_b)
    assert model.training  # mode restored
    for name in ("grad_dot", "network_magnitude", "spectral_position"):  # deterministic
        assert getattr(first, name) == getattr(second, name)
    # A training step with active dropout computed another function: its gradient is not mixed in.
    logits = model(batch_a[0])
    loss_fn(logits, batch_a[1]).backward()
    at_step = measure_lnp_at_step(model, loss_fn, batch_a, batch_b, grad_a=[p.grad for p in model.parameters()],
                                  outputs_a=logits)
    assert not at_step.step_gradient_reused
    assert at_step.grad_dot == pytest.approx(first.grad_dot, rel=1e-12)
    # Without dropout the step's function is the measured one, and its gradient is reused.
    model.eval()
    for p in model.parameters():
        p.grad = None
    logits = model(batch_a[0])
    loss_fn(logits, batch_a[1]).backward()
    reused = measure_lnp_at_step(model, loss_fn, batch_a, batch_b, grad_a=[p.grad for p in model.parameters()],
                                 outputs_a=logits)
    assert reused.step_gradient_reused and reused.grad_dot == pytest.approx(first.grad_dot, rel=1e-12)


def test_mixed_precision_step_gradient_is_recomputed_in_full_precision():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    batch_a = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    batch_b = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch_a[0])
        loss = F.cross_entropy(logits, batch_a[1])
    loss.backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = measure_lnp_at_step(model, F.cross_entropy, batch_a, batch_b,
                                     grad_a=[p.grad for p in model.parameters()], outputs_a=logits)
    full = measure_lnp(model, F.cross_entropy, batch_a, batch_b)
    assert not result.step_gradient_reused
    for name in ("grad_dot", "network_magnitude", "spectral_position"):
        assert getattr(result, name) == pytest.approx(getattr(full, name), rel=1e-5), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_is_measured_in_float32(dtype):
    """bfloat16 per-sample norms and D were tens of percent off; the same weights in float32 are
    exact, and the model keeps its own half-precision tensors."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 10)).to(dtype)
    batch_a = (torch.randn(32, 16).to(dtype), torch.randint(0, 10, (32,)))
    batch_b = (torch.randn(32, 16).to(dtype), torch.randint(0, 10, (32,)))
    before = [(p, p.data_ptr(), p.detach().clone()) for p in model.parameters()]
    double = copy.deepcopy(model).double()
    expected = reference(double, F.cross_entropy, (batch_a[0].double(), batch_a[1]),
                         (batch_b[0].double(), batch_b[1]), None, None)
    result = measure_lnp(model, F.cross_entropy, batch_a, batch_b, verify=True)
    for name in ("grad_dot", "network_magnitude", "spectral_position", "loss_magnitude"):
        assert getattr(result, name) == pytest.approx(expected[name], rel=1e-4), name
    assert all(p.data_ptr() == pointer and p.dtype == dtype and torch.equal(p, value) for p, pointer, value in before)


def _stepped(accumulate=False, clip=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    batch_a = (torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,)))
    batch_b = (torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,)))
    if accumulate:  # an earlier micro-batch's gradient is still in .grad
        F.cross_entropy(model(batch_b[0]), batch_b[1]).backward()
    logits = model(batch_a[0])
    F.cross_entropy(logits, batch_a[1]).backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    return model, batch_a, batch_b, [p.grad for p in model.parameters()], logits


@pytest.mark.parametrize("fault", ["clipped", "accumulated"])
def test_a_step_gradient_that_is_not_the_loss_gradient_is_recomputed(fault):
    model, batch_a, batch_b, grads, logits = _stepped(accumulate=fault == "accumulated",
                                                      clip=1e-3 if fault == "clipped" else None)
    with pytest.warns(UserWarning, match="grad_a is not the gradient of the loss on batch A"):
        result = measure_lnp_at_step(model, F.cross_entropy, batch_a, batch_b, grad_a=grads, outputs_a=logits)
    fresh = measure_lnp(model, F.cross_entropy, batch_a, batch_b)
    assert not result.step_gradient_reused
    assert result.grad_dot == pytest.approx(fresh.grad_dot, rel=1e-12)


def test_the_loss_gradient_itself_is_reused(recwarn):
    model, batch_a, batch_b, grads, logits = _stepped()
    result = measure_lnp_at_step(model, F.cross_entropy, batch_a, batch_b, grad_a=grads, outputs_a=logits)
    assert result.step_gradient_reused and not [w for w in recwarn if "grad_a" in str(w.message)]
    assert result.grad_dot == pytest.approx(measure_lnp(model, F.cross_entropy, batch_a, batch_b).grad_dot, rel=1e-12)


class BatchCentered(nn.Module):
    """Subtracts the batch mean: samples are coupled, and nothing in the model's types says so."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = self.body(x)
        return self.out(torch.tanh(h - h.mean(0, keepdim=True)))


def test_self_check_catches_coupled_samples(float64):
    torch.manual_seed(0)
    with pytest.raises(SamplesCoupledError, match="gives other outputs alone than in the batch"):
        verify_model(BatchCentered(), F.cross_entropy, (torch.randn(4, 4), torch.randint(0, 3, (4,))))


def test_self_check_catches_a_gap_in_the_fast_path(float64, monkeypatch):
    """If a future change dropped a use of a parameter, the check would name the group."""
    original = PerSampleNormTape.squared_norms

    def dropping_the_embedding(self, outputs, vectors, skip=None):
        norms = original(self, outputs, vectors, skip)
        norms.pop("wte.weight", None)
        return norms

    monkeypatch.setattr(PerSampleNormTape, "squared_norms", dropping_the_embedding)
    model, loss_fn, batch_a, _, _, _ = user_models.build("nanogpt_tied")
    with pytest.raises(VerificationError, match=r"wte \(outputs\): fast 0, reference .*wte.weight: op rules"):
        measure_lnp(model, loss_fn, batch_a, estimator="hutchinson", verify=True)


def test_verify_flag_runs_the_check_and_passes_on_sound_models(float64):
    model, loss_fn, batch_a, batch_b, _, _ = user_models.build("vit_more_classes_than_width")
    result = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="hutchinson", verify=True)
    assert math.isfinite(result.spectral_position)


@pytest.mark.parametrize("bn", [
    pytest.param(lambda: nn.BatchNorm1d(5, track_running_stats=False).eval(), id="no-running-stats-eval"),
    pytest.param(lambda: nn.BatchNorm1d(5).train(), id="train-mode"),
])
def test_batch_statistics_are_refused(bn):
    model = nn.Sequential(nn.Linear(4, 5), bn(), nn.Linear(5, 3))
    batch = (torch.randn(4, 4), torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match=r"module '1' is a BatchNorm1d that normalizes with the statistics of the batch"):
        measure_lnp(model, F.cross_entropy, batch)


def test_running_statistics_in_eval_mode_are_fine(float64):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
    batch = (torch.randn(4, 4), torch.randint(0, 3, (4,)))
    expected = reference(model, F.cross_entropy, batch, None, None, None)
    assert measure_lnp(model, F.cross_entropy, batch).network_magnitude == pytest.approx(
        expected["network_magnitude"], rel=1e-9)


def test_inference_mode_is_a_clear_error():
    model = nn.Linear(4, 3)
    batch = (torch.randn(4, 4), torch.randint(0, 3, (4,)))
    with torch.inference_mode(), pytest.raises(ValueError, match="inside torch.inference_mode"):
        measure_lnp(model, F.cross_entropy, batch)
    with torch.inference_mode():
        frozen = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="created under torch.inference_mode"):
        measure_lnp(frozen, F.cross_entropy, batch)


def test_summed_loss_is_refused():
    model = nn.Linear(4, 3)
    batch = (torch.randn(4, 4), torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match="loss_fn sums over samples.*reduction='mean'"):
        measure_lnp(model, lambda out, y: F.cross_entropy(out, y, reduction="sum"), batch)
    with pytest.raises(ValueError, match="not a mean over samples"):
        measure_lnp(model, lambda out, y: F.cross_entropy(out, y) / out.shape[0], batch)
    with pytest.raises(ValueError, match=r"loss_fn uses the parameters \['weight'\] directly"):
        measure_lnp(model, lambda out, y: F.cross_entropy(out, y) + 0.1 * model.weight.square().sum(), batch)


def test_randomness_in_eval_mode_is_refused():
    class NoisyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)

        def forward(self, x):
            return F.dropout(self.body(x), 0.5, training=True)

    batch = (torch.randn(4, 4), torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match="draws random numbers even in eval mode"):
        measure_lnp(NoisyNet(), F.cross_entropy, batch)


@pytest.mark.parametrize("options, message", [
    ({"max_norm": 1.0}, "max_norm=1.0: its forward rescales the weight rows in place"),
    ({"scale_grad_by_freq": True}, "scale_grad_by_freq=True"),
])
def test_embeddings_that_couple_or_change_are_refused(options, message):
    model = nn.Sequential(nn.Embedding(VOCAB := 7, 4, **options), nn.Flatten(), nn.Linear(8, 3))
    batch = (torch.randint(0, VOCAB, (4, 2)), torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match=message):
        measure_lnp(model, F.cross_entropy, batch)


@pytest.mark.parametrize("estimator", ["exact", "hutchinson", "entk"])
def test_a_functional_embedding_that_renormalizes_its_weight_is_refused(estimator):
    """``F.embedding(..., max_norm=...)`` rescales the table in place during the forward."""

    class Renormalizing(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(3 * torch.randn(7, 4))
            self.head = nn.Linear(4, 3)

        def forward(self, tokens):
            return self.head(F.embedding(tokens, self.table, max_norm=1.0).sum(1))

    model = Renormalizing()
    before = model.table.detach().clone()
    batch = (torch.randint(0, 7, (4, 2)), torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match="max_norm"):
        measure_lnp(model, F.cross_entropy, batch, estimator=estimator)
    if estimator != "entk":  # refused before the forward ran: the model is as it was
        assert torch.equal(model.table, before)


@pytest.mark.filterwarnings("ignore:None of the inputs have requires_grad")  # entk's forward without grad
@pytest.mark.parametrize("estimator", ["exact", "hutchinson", "entk"])
def test_reentrant_activation_checkpointing_is_a_clear_error(estimator):
    """Its region keeps no graph: per-sample gradients inside it do not exist."""
    model = user_models.CheckpointedMLP(use_reentrant=True)
    batch = (torch.randn(4, 4), torch.randint(0, 3, (4,)))
    with pytest.raises(ValueError, match="use_reentrant=False|activation checkpointing"):
        measure_lnp(model, F.cross_entropy, batch, estimator=estimator)
    with pytest.raises(ValueError, match="use_reentrant=False"):
        measure_lnp(model, F.cross_entropy, batch, estimator="exact", verify=True)


def test_a_batch_as_long_as_the_context_keeps_the_fast_path(float64):
    """Batch = context = width: every inner tensor has another dimension of the batch size, so the
    batch dimension is confirmed by a backward rather than read from the shape; the Llama's tensors
    are all batch-first and keep their layer rules."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab=17, layers=1, hidden=8, ff=16, heads=2, context=8))
    tokens_a, tokens_b = torch.randint(0, 17, (8, 9)), torch.randint(0, 17, (8, 9))
    batch_a, batch_b = (tokens_a[:, :-1], tokens_a[:, 1:]), (tokens_b[:, :-1], tokens_b[:, 1:])
    expected = reference(model, user_models.token_loss, batch_a, batch_b, None, None)
    result = measure_lnp(model, user_models.token_loss, batch_a, batch_b)
    assert not any("VJP" in path for path in result.paths.values()), result.paths
    for name in COMPONENTS:
        assert getattr(result, name) == pytest.approx(expected[name], rel=1e-6, abs=1e-14), name


def test_self_check_runs_the_fast_path_at_the_batch_size(float64, monkeypatch):
    """With the samples' layout read from shapes alone and the batch-dimension confirmation off, the
    sequence-first layer splits its gradient by position: the self-check sees it, because its fast path
    runs on the whole batch (T = n there)."""
    from specreach.lnp.forward_record import ForwardRecorder, is_batched

    model, loss_fn, batch_a, *_ = user_models.build("sequence_first_as_long_as_the_batch")
    monkeypatch.setattr(PerSampleNormTape, "_confirm_batch_dims", lambda self, outputs: False)
    monkeypatch.setattr(ForwardRecorder, "holds_samples_first", lambda self, value: is_batched(value, self.n))
    monkeypatch.setattr(ForwardRecorder, "splits_by_sample", lambda self, value: is_batched(value, self.n))
    # Split by position, the layer's rows mix the samples: the check's backward from one sample sees it.
    with pytest.raises(SamplesCoupledError, match="at the output of module 'mix'"):
        verify_model(model, loss_fn, batch_a)


def test_a_branch_on_the_whole_batch_is_a_clear_error():
    """A tied use without an op rule (einsum) sends the model to a per-sample VJP; vmap cannot run
    its Python branch, and the loop that can finds that a sample alone takes the other branch."""

    class Branching(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Linear(4, 3)

        def forward(self, x):
            h = torch.tanh(self.encoder(x))
            if x.sum() > 0:  # a Python branch on the whole batch
                h = h * 2
            return torch.einsum("bc,ci->bi", h, self.encoder.weight)

    torch.manual_seed(0)
    inputs = torch.ones(4, 4)
    inputs[3] = -10.0  # the batch sums below 0, sample 0 alone above
    batch = (inputs, torch.randn(4, 4))
    with pytest.raises(SamplesCoupledError, match=r"sample 0 of batch A gives other outputs alone than in the batch"):
        measure_lnp(Branching(), F.mse_loss, batch, estimator="hutchinson", probes=2)
    # Without the self-check, the per-sample loop finds it as well.
    with pytest.raises(ValueError, match=r"module call '<Branching model>' gives sample 0 a different output alone "
                                         r"than in the batch, so its samples are coupled"):
        measure_lnp(Branching(), F.mse_loss, batch, estimator="hutchinson", probes=2, verify=False)


def test_models_vmap_cannot_run_take_the_per_sample_loop(float64):
    """nn.LSTM's fused op has no batching rule, and a per-sample Python branch cannot be vmapped:
    their per-sample VJPs run one sample at a time (the values are checked in the tests above)."""
    for case, name in (("lstm_lm", "rnn.weight_hh_l0"), ("per_sample_branches", "scale")):
        model, loss_fn, batch_a, *_ = user_models.build(case)
        tape = PerSampleNormTape(model, dict(model.named_parameters()))
        with tape:
            outputs = model(batch_a[0])
        tape.squared_norms(outputs, torch.ones_like(outputs))
        assert "VJP" in tape.paths[name] and len(tape._vmap_failed) == 1, case
