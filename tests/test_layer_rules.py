"""Each layer rule proven, per configuration it claims, against plain autograd on each sample alone;
every configuration outside it measured through the per-sample VJP instead; and the documentation's
table of rules in step with the code.

The reference knows nothing of rules: for a Rademacher probe r, sample i's squared gradient norm is
‖∂(r_iᵀ f(x_i))/∂p‖² from ``torch.autograd.grad`` on that sample alone, in float64."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from specreach.lnp.layer_rules import install_layer_rules, layer_rule, rules
from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.lnp.probes import rademacher

DOCS = Path(__file__).resolve().parents[1] / "docs" / "estimators.md"


def tokens(*shape):
    values = torch.randint(0, 9, shape)
    values[:, :2] = 1  # a token repeated within each sample, and the padding_idx of the cases that have one
    return values


#: (case id, layer, one batch of inputs): every configuration a rule claims in its ``proven`` text.
WITHIN = [
    ("linear-2d", lambda: nn.Linear(4, 3), lambda: torch.randn(5, 4)),
    ("linear-3d-no-bias", lambda: nn.Linear(4, 3, bias=False), lambda: torch.randn(5, 6, 4)),
    ("linear-4d", lambda: nn.Linear(4, 3), lambda: torch.randn(5, 2, 3, 4)),
    ("embedding", lambda: nn.Embedding(9, 3), lambda: tokens(5, 6)),
    ("embedding-padding-idx", lambda: nn.Embedding(9, 3, padding_idx=1), lambda: tokens(5, 6)),
    ("embedding-sparse", lambda: nn.Embedding(9, 3, sparse=True), lambda: tokens(5, 6)),
    ("layer-norm", lambda: nn.LayerNorm(4), lambda: torch.randn(5, 6, 4)),
    ("layer-norm-no-bias", lambda: nn.LayerNorm(4, bias=False), lambda: torch.randn(5, 6, 4)),
    ("layer-norm-2d-shape", lambda: nn.LayerNorm((6, 4)), lambda: torch.randn(5, 6, 4)),
    ("rms-norm", lambda: nn.RMSNorm(4), lambda: torch.randn(5, 6, 4)),
    ("rms-norm-2d-shape", lambda: nn.RMSNorm((6, 4), eps=1e-5), lambda: torch.randn(5, 6, 4)),
    ("group-norm-2-groups", lambda: nn.GroupNorm(2, 4), lambda: torch.randn(5, 4, 3, 3)),
    ("group-norm-1-group", lambda: nn.GroupNorm(1, 4), lambda: torch.randn(5, 4, 6)),
    ("group-norm-per-channel", lambda: nn.GroupNorm(4, 4), lambda: torch.randn(5, 4, 3, 3)),
    ("instance-norm-1d", lambda: nn.InstanceNorm1d(3, affine=True), lambda: torch.randn(5, 3, 6)),
    ("instance-norm-2d", lambda: nn.InstanceNorm2d(3, affine=True), lambda: torch.randn(5, 3, 4, 4)),
    ("instance-norm-3d", lambda: nn.InstanceNorm3d(2, affine=True), lambda: torch.randn(5, 2, 3, 3, 3)),
    ("conv1d", lambda: nn.Conv1d(2, 3, 3, padding=1), lambda: torch.randn(5, 2, 7)),
    ("conv1d-same-dilated", lambda: nn.Conv1d(2, 4, 3, padding="same", dilation=2), lambda: torch.randn(5, 2, 7)),
    ("conv2d", lambda: nn.Conv2d(2, 3, 3, padding=1), lambda: torch.randn(5, 2, 5, 5)),
    ("conv2d-valid-no-bias", lambda: nn.Conv2d(2, 3, 3, padding="valid", bias=False), lambda: torch.randn(5, 2, 5, 5)),
    ("conv2d-same", lambda: nn.Conv2d(2, 3, (3, 2), padding="same"), lambda: torch.randn(5, 2, 5, 5)),
    ("conv2d-tuple-padding-stride", lambda: nn.Conv2d(2, 3, 3, stride=2, padding=(1, 2)), lambda: torch.randn(5, 2, 7, 6)),
    ("conv2d-dilation", lambda: nn.Conv2d(2, 3, 3, dilation=2, padding=2), lambda: torch.randn(5, 2, 6, 6)),
    ("conv2d-groups", lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1), lambda: torch.randn(5, 4, 5, 5)),
    ("conv2d-depthwise", lambda: nn.Conv2d(4, 4, 3, groups=4, padding=1), lambda: torch.randn(5, 4, 5, 5)),
    ("conv2d-channels-last", lambda: nn.Conv2d(3, 4, 3, padding=1).to(memory_format=torch.channels_last),
     lambda: torch.randn(5, 3, 6, 6).to(memory_format=torch.channels_last)),
    ("conv3d", lambda: nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), lambda: torch.randn(5, 2, 4, 4, 3)),
    ("batch-norm-1d-features", lambda: running(nn.BatchNorm1d(3)), lambda: torch.randn(5, 3)),
    ("batch-norm-1d-sequence", lambda: running(nn.BatchNorm1d(3)), lambda: torch.randn(5, 3, 6)),
    ("batch-norm-2d", lambda: running(nn.BatchNorm2d(3)), lambda: torch.randn(5, 3, 4, 4)),
    ("batch-norm-3d", lambda: running(nn.BatchNorm3d(2)), lambda: torch.randn(5, 2, 3, 3, 3)),
    ("mup-readout", lambda: mup_readout(shared=False), lambda: torch.randn(5, 6, 8)),
    ("mup-shared-readout", lambda: mup_readout(shared=True), lambda: torch.randn(5, 6, 8)),
    ("timm-layer-norm-no-bias", lambda: timm_layer_norm(bias=False), lambda: torch.randn(5, 6, 4)),
    ("timm-layer-norm", lambda: timm_layer_norm(bias=True), lambda: torch.randn(5, 6, 4)),
    ("timm-layer-norm-2d", lambda: timm_layer_norm_2d(), lambda: torch.randn(5, 4, 3, 3)),
    ("hf-conv1d", lambda: hf_conv1d(), lambda: torch.randn(5, 6, 4)),
    ("hf-conv1d-2d-input", lambda: hf_conv1d(), lambda: torch.randn(5, 4)),
]


def running(norm):
    """A BatchNorm on (made-up) running statistics, as a trained model in eval mode has them."""
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm.eval()


def timm_layer_norm_2d():
    import timm.layers

    install_layer_rules()
    return timm.layers.LayerNorm2d(4)


def hf_conv1d():
    from transformers.pytorch_utils import Conv1D

    install_layer_rules()
    layer = Conv1D(3, 4)  # nf = 3 outputs, nx = 4 inputs
    torch.nn.init.normal_(layer.bias)
    return layer


def mup_readout(shared):
    """muP's readout at width 8 over a base width of 4 (its input scaled by output_mult / width_mult)."""
    import mup

    def build(width):
        if shared:
            return mup.MuSharedReadout(nn.Parameter(torch.randn(3, width)), bias=False, output_mult=1.5)  # mup sizes its bias wrongly
        return mup.MuReadout(width, 3, output_mult=1.5)

    readout = build(8)
    mup.set_base_shapes(readout, build(4))
    install_layer_rules()
    return readout


def timm_layer_norm(bias):
    import timm.layers

    install_layer_rules()
    return timm.layers.LayerNorm(4, bias=bias)

#: Configurations outside every rule: the per-sample VJP computes them, exactly.
OUTSIDE = [
    ("conv2d-circular", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), lambda: torch.randn(5, 2, 5, 5)),
    ("conv2d-reflect", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), lambda: torch.randn(5, 2, 5, 5)),
    ("conv1d-replicate", lambda: nn.Conv1d(2, 3, 3, padding=2, padding_mode="replicate"), lambda: torch.randn(5, 2, 7)),
    ("instance-norm-running-stats", lambda: running(nn.InstanceNorm2d(3, affine=True, track_running_stats=True)),
     lambda: torch.randn(5, 3, 4, 4)),
    ("embedding-bag-mean", lambda: nn.EmbeddingBag(9, 3, mode="mean"), lambda: tokens(5, 6)),
    ("embedding-bag-sum-padding-idx", lambda: nn.EmbeddingBag(9, 3, mode="sum", padding_idx=1), lambda: tokens(5, 6)),
    ("embedding-bag-max", lambda: nn.EmbeddingBag(9, 3, mode="max"), lambda: tokens(5, 6)),
    ("complex-linear", lambda: nn.Linear(4, 3, dtype=torch.complex128), lambda: torch.randn(5, 4, dtype=torch.complex128)),
    ("conv-transpose", lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), lambda: torch.randn(5, 2, 3, 3)),
]


class Real(nn.Module):
    """The layer's outputs (their real part), batch first."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        y = self.layer(x)
        return torch.view_as_real(y) if y.is_complex() else y


def fast_and_reference(layer, inputs):
    model = Real(layer).eval()
    params = {name: p for name, p in model.named_parameters()}
    tape = PerSampleNormTape(model, params)
    with torch.enable_grad():
        outputs = tape.record(lambda: model(inputs))
        probe = rademacher(outputs.shape, torch.Generator().manual_seed(1), outputs)
        fast = {name: value.double() for name, value in tape.squared_norms(outputs, probe).items()}
        paths = tape.paths
        tape.clear()
    reference = {name: torch.zeros(inputs.shape[0], dtype=torch.float64) for name in params}
    for i in range(inputs.shape[0]):
        alone = model(inputs[i:i + 1])
        grads = torch.autograd.grad((alone * probe[i:i + 1]).sum(), list(params.values()), allow_unused=True)
        for name, grad in zip(params, grads):
            if grad is not None:
                reference[name][i] = float(torch.linalg.vector_norm(grad.to_dense(), dtype=grad.dtype).abs() ** 2)
    return fast, reference, paths


@pytest.mark.parametrize("layer, inputs", [(layer, inputs) for _, layer, inputs in WITHIN],
                         ids=[case for case, _, _ in WITHIN])
def test_a_rule_is_exact_for_every_configuration_it_claims(float64, layer, inputs):
    torch.manual_seed(0)
    layer, inputs = layer(), inputs()
    fast, reference, paths = fast_and_reference(layer, inputs)
    assert all("layer rule" in path for path in paths.values()), paths
    for name, values in reference.items():
        torch.testing.assert_close(fast[name], values, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("layer, inputs", [(layer, inputs) for _, layer, inputs in OUTSIDE],
                         ids=[case for case, _, _ in OUTSIDE])
def test_a_layer_outside_every_rule_takes_the_vjp_and_is_exact(float64, layer, inputs):
    torch.manual_seed(0)
    layer, inputs = layer(), inputs()
    fast, reference, paths = fast_and_reference(layer, inputs)
    assert all("VJP" in path for path in paths.values()), paths
    for name, values in reference.items():
        torch.testing.assert_close(fast[name], values, rtol=1e-10, atol=1e-12, msg=name)


def test_the_vjp_path_says_which_rule_was_not_proven_for_what(float64):
    _, _, paths = fast_and_reference(nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), torch.randn(3, 2, 5, 5))
    assert paths["layer.weight"] == ("module VJP of 'layer' (Conv2d layer rule not proven for "
                                     "padding_mode='circular' (the rule unfolds a zero-padded input))")


def project_rules() -> set[type]:
    """The rules specreach and its built-in plugin register (a test elsewhere registers a plugin's own)."""
    install_layer_rules()
    return {kind for kind in rules() if kind.__module__.split(".")[0] in ("torch", "mup", "timm", "transformers")}


def test_every_rule_is_proven_here():
    """Each rule, built-in or of the project's plugins, has a proven case above (a rule added without
    proof fails here)."""
    proven_kinds = {type(layer()) for _, layer, _ in WITHIN}
    assert project_rules() == proven_kinds, project_rules() ^ proven_kinds
    assert all(layer_rule(layer()) is not None for _, layer, _ in WITHIN)


def test_the_documented_table_lists_every_rule_as_the_code_has_it():
    """docs/estimators.md's table of layer rules: one row per registered layer type, its proven text verbatim."""
    install_layer_rules()
    import mup
    import timm.layers  # noqa: F401  (the plugins' rules install once their packages are imported)
    import transformers.pytorch_utils  # noqa: F401

    install_layer_rules()
    section = DOCS.read_text().split("### Which layers have a rule")[1].split("\n#")[0]
    rows = dict(re.findall(r"^\| `([\w.]+)` \| [^|]+ \| ([^|]+?) \|", section, flags=re.MULTILINE))
    expected = {f"{kind.__module__.split('.')[0]}.{kind.__qualname__}".replace("torch.", "nn.", 1): rule.proven
                for kind, rule in rules().items() if kind in project_rules()}
    assert mup.MuReadout in rules()
    assert rows == expected
