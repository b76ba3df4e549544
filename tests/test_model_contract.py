"""The model contract: what the engine knows about a model comes from its builder (output_size,
example_batch, fit_to_data, representation_size), never from peeking at parameters or attributes."""

import pytest
import torch
import yaml

from specreach import Engine, load_spec
from specreach.data.base import DataInfo
from specreach.engine.tasks import check_model_fits_data, loss_for
from specreach.models.base import ModelBuilder
from specreach.models.parameterization import load_model
from specreach.plugins import create

TINY = {
    "llama": {"vocab": 40, "layers": 1, "hidden": 8, "ff": 16, "heads": 2, "context": 12},
    "vit": {"image_size": 8, "channels": 1, "patch": 4, "hidden": 8, "mlp": 16, "heads": 2, "layers": 1, "classes": 3},
    "random-features": {"inputs": 5, "features": 7},
}
TASK = {"llama": "next-token", "vit": "classification", "random-features": "regression"}


@pytest.mark.parametrize("kind", list(TINY))
def test_example_batches_fit_the_model_and_its_loss(kind):
    builder = create("model", kind)
    params = builder.Params(**TINY[kind])
    inputs, targets = builder.example_batch(params, 3, torch.Generator().manual_seed(0))
    again = builder.example_batch(params, 3, torch.Generator().manual_seed(0))
    assert torch.equal(inputs, again[0]) and torch.equal(targets, again[1])  # from the generator only
    model = builder.build(params)
    outputs = model(inputs)
    assert outputs.shape[0] == 3 and outputs.shape[-1] == builder.output_size(params)
    info = DataInfo(task=TASK[kind], input_shape=tuple(inputs.shape[1:]), vocab=40, classes=3)
    loss = loss_for(info)(outputs, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_a_builder_must_declare_the_contract():
    class Incomplete(ModelBuilder):
        name = "incomplete"

        def build(self, params, *, mup_base=None):
            return torch.nn.Linear(2, 2)

    with pytest.raises(TypeError, match="abstract methods example_batch, output_size"):
        Incomplete()


def test_the_data_decides_a_llamas_vocab_when_the_spec_does_not():
    builder = create("model", "llama")
    without = builder.Params(**{**TINY["llama"], "vocab": None})
    info = DataInfo(task="next-token", input_shape=(12,), vocab=256)
    assert builder.fit_to_data(without, info).vocab == 256
    assert builder.fit_to_data(builder.Params(**TINY["llama"]), info).vocab == 40  # given: kept
    with pytest.raises(ValueError, match="needs vocab"):
        builder.build(without)


def test_a_model_that_cannot_predict_the_data_is_refused_before_training():
    builder = create("model", "vit")
    params = TINY["vit"]
    model = builder.build(builder.Params(**params))
    sample = torch.zeros(2, 1, 8, 8)
    digits = DataInfo(task="classification", input_shape=(1, 8, 8), classes=10)
    with pytest.raises(ValueError, match="model 'vit' has 3 outputs but task 'classification' of data 'digits' "
                                         r"needs 10 \(its 10 classes\)"):
        check_model_fits_data(model, params, digits, sample, "vit", "digits")
    text = DataInfo(task="next-token", input_shape=(12,), vocab=256)
    llama = create("model", "llama")
    with pytest.raises(ValueError, match="vocabulary of 40 but data 'pydoc-text' has 256 tokens"):
        check_model_fits_data(llama.build(llama.Params(**TINY["llama"])), TINY["llama"], text,
                              torch.zeros(2, 12, dtype=torch.long), "llama", "pydoc-text")


def test_a_spec_without_vocab_trains_with_the_data_sources(tmp_path):
    params = {key: value for key, value in TINY["llama"].items() if key != "vocab"}
    spec = {
        "name": "no-vocab", "model": {"kind": "llama", "params": params},
        "data": {"kind": "pydoc-text", "params": {"context": 12, "validation_size": 8}},
        "train": {"batch_size": 4, "steps": 3}, "measure": {"estimator": "hutchinson", "probes": 2, "schedule": [0], "batch_size": 2},
        "tracking": {"enabled": False}, "output": str(tmp_path / "out"),
        "probe": {"backbones": ["trained"], "steps": 2},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    results = Engine(load_spec(path)).run()
    assert [r.status for r in results] == ["FINISHED", "FINISHED"], [r.message for r in results]
    model, checkpoint = load_model(results[0].output_dir / "final.pt")
    assert checkpoint["recipe"]["params"]["vocab"] == 256 and model.embedding.num_embeddings == 256


@pytest.mark.parametrize("kind", list(TINY))
def test_the_outputs_a_model_declares_without_torch_are_its_builders(kind):
    builder = create("model", kind)
    params = builder.Params(**TINY[kind])
    assert params.declared_outputs() == builder.output_size(params)


@pytest.mark.parametrize("kind, params", [("pydoc-text", {}), ("digits", {}), ("digits", {"task": "next-pixel"}),
                                          ("powerlaw-teacher", {"train_size": 8, "validation_size": 4})])
def test_the_task_a_data_source_declares_without_torch_is_its_infos(kind, params):
    """Validation checks outputs against these declarations; they must say what info() says."""
    source = create("dataset", kind, **params)
    assert source.params.task_outputs() == source.info().task_outputs()
