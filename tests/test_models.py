"""Models, presets, parameterizations and checkpoints."""

import copy
import json
import subprocess
import sys

import mup
import pytest
import torch
import torch.nn.functional as F

from reference import lnp_reference
from specreach import measure_lnp
from specreach.models.catalog import parameter_count
from specreach.models.coord_check import coord_check
from specreach.models.linear_probe import LinearProbe
from specreach.models.parameterization import (
    ModelRecipe, Parameterization, build_model, builder_for, load_model, save_checkpoint,
)
from specreach.models.presets import PRESETS, get_preset

STANDARD = Parameterization()


def token_cross_entropy(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def paper_precision(printed: str) -> float:
    """Half a unit in the last digit the paper prints (1.2M: 0.05M; 102.6K: 0.05K)."""
    decimals = len(printed[:-1].split(".")[1]) if "." in printed else 0
    return 0.5 * 10 ** -decimals * {"K": 1e3, "M": 1e6}[printed[-1]]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts_match_the_paper(name):
    preset = PRESETS[name]
    count = parameter_count(preset)
    # Within 1 % of the paper's figure, or within the precision it is printed at where that is
    # coarser (1.2M and 1.1M are printed to ±4 %; the built counts are 1.23M and 1.12M).
    tolerance = max(0.01, paper_precision(preset.paper_parameters) / preset.paper_parameter_count)
    assert count == pytest.approx(preset.paper_parameter_count, rel=tolerance)


def test_table_1_row_that_does_not_add_up_is_documented():
    preset = get_preset("llama-simplestories-3.8m")
    assert (preset.params["hidden"], preset.params["ff"]) == (192, 512)
    assert "196" in preset.note and "4.6M" in preset.note
    as_printed = dict(preset.params, hidden=196, ff=768)
    with torch.device("meta"):
        printed = build_model(ModelRecipe(kind="llama", params=as_printed))
    assert sum(p.numel() for p in printed.parameters()) == pytest.approx(4.6e6, rel=0.01)


def test_models_json_lists_every_preset():
    done = subprocess.run([sys.executable, "-m", "specreach.cli", "models", "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["name"] for r in rows] == list(PRESETS)
    for row in rows:
        assert {"name", "architecture", "parameters"} <= set(row)
        assert row["parameters"] == parameter_count(PRESETS[row["name"]])


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ValueError, match="did you mean llama-simplestories-1.2m"):
        get_preset("llama-simplestories-1.2")


def test_llama_is_causal():
    model = build_model(ModelRecipe(kind="llama", params=dict(vocab=13, layers=2, hidden=16, ff=24, heads=2, context=9)))
    tokens = torch.randint(0, 13, (2, 9))
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 13
    before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :6], after[:, :6])  # earlier positions: bit-identical
    assert not torch.allclose(before[:, 6:], after[:, 6:])


TINY = {
    "llama": dict(vocab=11, layers=2, hidden=8, ff=12, heads=2, context=5),
    "vit": dict(image_size=8, channels=1, patch=4, hidden=8, mlp=16, heads=2, layers=1, classes=3),
}


def tiny_batches(kind, params, n_a=3, n_b=2):
    if kind == "llama":
        make = lambda n: (torch.randint(0, 11, (n, 5)), torch.randint(0, 11, (n, 5)))  # noqa: E731
        return token_cross_entropy, make(n_a), make(n_b)
    make = lambda n: (torch.randn(n, 1, 8, 8), torch.randint(0, 3, (n,)))  # noqa: E731
    return F.cross_entropy, make(n_a), make(n_b)


@pytest.mark.parametrize("kind", ["llama", "vit"])
@pytest.mark.parametrize("parameterization", [STANDARD, Parameterization(kind="mup", base_width=4)], ids=["standard", "mup"])
def test_estimators_agree_with_entk_under_both_parameterizations(float64, kind, parameterization):
    model = build_model(ModelRecipe(kind=kind, params=TINY[kind], parameterization=parameterization)).double()
    if parameterization.kind == "mup":
        assert all(hasattr(p, "infshape") for p in model.parameters())
    loss_fn, batch_a, batch_b = tiny_batches(kind, TINY[kind])
    expected = lnp_reference(model, loss_fn, batch_a, batch_b)
    entk = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="entk")
    exact = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact")
    for name in ("grad_dot", "loss_magnitude", "network_magnitude", "spectral_position"):
        assert getattr(entk, name) == pytest.approx(expected[name], rel=1e-6), name
        assert getattr(exact, name) == pytest.approx(expected[name], rel=1e-6), name
    runs = [measure_lnp(model, loss_fn, batch_a, batch_b, estimator="hutchinson", probes=4,
                        generator=torch.Generator().manual_seed(seed)) for seed in range(40)]
    mean = sum(r.network_magnitude for r in runs) / len(runs)
    stderr = (sum((r.network_magnitude - mean) ** 2 for r in runs) / (len(runs) - 1) / len(runs)) ** 0.5
    assert abs(mean - expected["network_magnitude"]) < 4 * stderr + 1e-12 * mean


@pytest.mark.parametrize("kind", ["llama", "vit"])
@pytest.mark.parametrize("widths", [(8, 16, 32)])
def test_builds_at_several_widths_under_both_parameterizations(kind, widths):
    builder = builder_for(kind)
    for width in widths:
        params = builder.at_width(builder.Params(**TINY[kind]), width).model_dump()
        for parameterization in (STANDARD, Parameterization(kind="mup", base_width=8)):
            model = build_model(ModelRecipe(kind=kind, params=params, parameterization=parameterization))
            _, batch_a, _ = tiny_batches(kind, params)
            assert torch.isfinite(model(batch_a[0])).all()


def test_mup_attention_and_readout():
    model = build_model(ModelRecipe(kind="vit", params=TINY["vit"], parameterization=Parameterization(kind="mup", base_width=4)))
    assert isinstance(model.head, mup.MuReadout)
    for block in model.blocks:  # the ViT keeps head_dim as it widens: the standard 1/sqrt(head_dim)
        assert block.attn.fused_attn is False and block.attn.scale == pytest.approx(block.attn.head_dim ** -0.5)
    llama = build_model(ModelRecipe(kind="llama", params=TINY["llama"], parameterization=Parameterization(kind="mup", base_width=4)))
    assert isinstance(llama.output, mup.MuReadout)
    # Heads stay fixed as a Llama widens: head_dim 4 here, 2 at the base width; sqrt(2)/4 → 1/head_dim scaling.
    assert all(block.attention.scale == pytest.approx(2 ** 0.5 / 4) for block in llama.layers)
    # The width multiplier is hidden / base_width, and every width dimension is seen as infinite.
    assert llama.output.width_mult() == 2
    assert llama.layers[0].feed_forward.w1.weight.infshape.ninf() == 2


def test_mup_checkpoint_restores_base_shapes(tmp_path):
    recipe = ModelRecipe(kind="llama", params=TINY["llama"], parameterization=Parameterization(kind="mup", base_width=4), seed=3)
    model = build_model(recipe)
    with torch.no_grad():
        model.output.weight.add_(1.0)  # a trained state differs from the initialization
    save_checkpoint(tmp_path / "model.pt", model, recipe)
    restored, _ = load_model(tmp_path / "model.pt")
    tokens = torch.randint(0, 11, (2, 5))
    assert torch.equal(restored(tokens), model(tokens))
    assert restored.output.width_mult() == model.output.width_mult()
    assert all(hasattr(p, "infshape") for p in restored.parameters())
    # (deepcopy loses infshape, which is why checkpoints rebuild from the recipe)
    assert not hasattr(copy.deepcopy(model).output.weight, "infshape")


def test_missing_checkpoint_says_what(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*nothing.pt"):
        load_model(tmp_path / "nothing.pt")


def test_model_init_depends_on_the_seed_only():
    state = torch.get_rng_state()
    a = build_model(ModelRecipe(kind="llama", params=TINY["llama"], seed=1))
    b = build_model(ModelRecipe(kind="llama", params=TINY["llama"], seed=1))
    c = build_model(ModelRecipe(kind="llama", params=TINY["llama"], seed=2))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.embedding.weight, c.embedding.weight)


def test_vit_coordinate_check_mup_is_flat():
    params = dict(image_size=8, channels=1, patch=4, hidden=32, mlp=64, heads=2, layers=2, classes=10)
    scales = coord_check("vit", params, [32, 64, 128], Parameterization(kind="mup", base_width=32), steps=4, lr=1e-2)
    logits = [scales[w]["head"][-1] for w in (32, 64, 128)]
    assert max(logits) / min(logits) < 2


def test_coordinate_check_mup_is_flat_and_standard_grows():
    params = dict(vocab=64, layers=2, hidden=32, ff=64, heads=2, context=16)
    widths = [32, 64, 128]
    logits = {}
    for parameterization in (STANDARD, Parameterization(kind="mup", base_width=32)):
        scales = coord_check("llama", params, widths, parameterization, steps=4, lr=1e-2)
        logits[parameterization.kind] = [scales[w]["output"][-1] for w in widths]
    assert max(logits["mup"]) / min(logits["mup"]) < 2
    assert logits["standard"][0] < logits["standard"][1] < logits["standard"][2]
    assert logits["standard"][2] / logits["standard"][0] > 2


@pytest.mark.parametrize("kind", ["llama", "vit"])
def test_linear_probe_trains_the_head_only(float64, kind):
    backbone = build_model(ModelRecipe(kind=kind, params=TINY[kind])).double()
    builder = builder_for(kind)
    outputs = 11 if kind == "llama" else 3
    probe = LinearProbe(backbone, builder.representation_size(builder.Params(**TINY[kind])), outputs).double()
    assert [name for name, p in probe.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    loss_fn, batch_a, batch_b = tiny_batches(kind, TINY[kind])
    result = measure_lnp(probe, loss_fn, batch_a, batch_b, estimator="exact")
    expected = lnp_reference(probe, loss_fn, batch_a, batch_b)
    assert result.spectral_position == pytest.approx(expected["spectral_position"], rel=1e-6)
    assert set(result.network_magnitude_by_group) == {"head"}


def test_linear_probe_on_random_features_trains_on_the_features(float64):
    """The probe's input is φ(Wx), the representation, not the frozen layer's pre-activation Wx."""
    backbone = build_model(ModelRecipe(kind="random-features", params={"inputs": 5, "features": 12})).double()
    probe = LinearProbe(backbone, 12, 1).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    features = 2 ** 0.5 * torch.relu(x @ backbone.projection.weight.T)
    assert torch.allclose(probe(x), probe.head(features))
    assert not torch.allclose(probe(x), probe.head(x @ backbone.projection.weight.T))


def test_linear_probe_needs_a_representation_method():
    class NoRepresentation(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Linear(3, 4)  # an attribute of that name is no representation
            self.representation = torch.nn.Linear(4, 4)  # nor is a submodule

        def forward(self, x):
            return self.representation(self.features(x))

    with pytest.raises(TypeError, match="defines no representation"):
        LinearProbe(NoRepresentation(), 4, 2)


def test_random_feature_builder_agrees_with_entk(float64):
    model = build_model(ModelRecipe(kind="random-features", params={"inputs": 5, "features": 12})).double()
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["readout.weight"]
    with torch.no_grad():
        model.readout.weight.normal_()  # away from the zero initialization, so that f ≠ 0
    batch_a = (torch.randn(6, 5), torch.randn(6, 1))
    batch_b = (torch.randn(4, 5), torch.randn(4, 1))
    loss_fn = torch.nn.functional.mse_loss
    expected = lnp_reference(model, loss_fn, batch_a, batch_b)
    for estimator in ("exact", "hutchinson", "entk"):
        result = measure_lnp(model, loss_fn, batch_a, batch_b, estimator=estimator)
        # One output per sample: a Rademacher probe is ±1, so even Hutchinson is exact here.
        assert result.spectral_position == pytest.approx(expected["spectral_position"], rel=1e-6), estimator
    with pytest.raises(ValueError, match="frozen first layer"):
        build_model(ModelRecipe(kind="random-features", params={"inputs": 5, "features": 12},
                                parameterization=Parameterization(kind="mup", base_width=4)))


def test_mup_reinitializes_hidden_weights_only():
    params = dict(TINY["vit"], hidden=32, mlp=64, heads=2)
    standard = build_model(ModelRecipe(kind="vit", params=params, seed=5))
    scaled = build_model(ModelRecipe(kind="vit", params=params, seed=5,
                                     parameterization=Parameterization(kind="mup", base_width=8)))
    # Input-like weights (one width dimension) keep the standard initialization...
    assert torch.equal(scaled.patch_embed.proj.weight, standard.patch_embed.proj.weight)
    assert torch.equal(scaled.pos_embed, standard.pos_embed)
    # ...hidden weights get std 0.02 at the base width, shrunk by sqrt(fan-in multiplier) = 2 here:
    # the standard draw itself, rescaled.
    hidden = torch.cat([b.mlp.fc1.weight.detach().flatten() for b in scaled.blocks])
    assert float(hidden.std()) == pytest.approx(0.02 / 2, rel=0.1)
    for muP_block, block in zip(scaled.blocks, standard.blocks):
        assert torch.equal(muP_block.mlp.fc1.weight, block.mlp.fc1.weight / 2)
        assert torch.equal(muP_block.attn.qkv.weight, block.attn.qkv.weight / 2)


@pytest.mark.parametrize("kind", ["llama", "vit"])
def test_mup_at_its_base_width_is_the_standard_model(float64, kind):
    """Same seed, base width: muP and standard parameterization are the same function (the
    readout starts as the standard head, attention is 1/sqrt(head_dim), hidden weights unscaled)."""
    params = TINY[kind]
    standard = build_model(ModelRecipe(kind=kind, params=params, seed=7)).double()
    scaled = build_model(ModelRecipe(kind=kind, params=params, seed=7,
                                     parameterization=Parameterization(kind="mup", base_width=params["hidden"])))
    scaled = scaled.double()
    for (name, p), (_, q) in zip(standard.named_parameters(), scaled.named_parameters()):
        assert torch.equal(p, q), name
    _, batch_a, _ = tiny_batches(kind, params, n_a=4)
    assert torch.allclose(scaled(batch_a[0]), standard(batch_a[0]), rtol=1e-12, atol=1e-14)
    # and so the first measurement agrees too (the CPU run's first-window Ñ differed 43× before)
    loss_fn = token_cross_entropy if kind == "llama" else F.cross_entropy
    measured = [measure_lnp(m, loss_fn, batch_a, estimator="exact").network_magnitude for m in (standard, scaled)]
    assert measured[1] == pytest.approx(measured[0], rel=1e-9)
