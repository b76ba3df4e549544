"""A data source from an installed plugin: plugins/specreach-kta registers 'xor-quadrants'.

It must keep the DataSource contract, validate inside a spec like a built-in, and train end to
end through the engine.
"""

import pytest
import torch
import yaml
from pydantic import ValidationError

from specreach import Engine, load_spec
from specreach.plugins import get_plugin_manager

SMALL = {"train_size": 64, "validation_size": 32}
TINY_VIT = {"image_size": 8, "channels": 1, "patch": 4, "hidden": 8, "mlp": 16, "heads": 2, "layers": 1, "classes": 2}


def xor_quadrants(**params):
    return get_plugin_manager().datasets()["xor-quadrants"].component(**{**SMALL, **params})


def test_installed_entry_point_registers_the_data_source():
    registered = get_plugin_manager().datasets()["xor-quadrants"]
    assert "specreach_kta" in registered.source
    info = xor_quadrants().info()
    assert (info.task, info.input_shape, info.classes, info.train_samples) == ("classification", (1, 8, 8), 2, 64)


def test_batches_follow_the_contract():
    source = xor_quadrants()
    batches = list(source.train_batches(16, data_seed=3))
    assert len(batches) == 64 // 16
    images, labels = batches[0]
    assert images.shape == (16, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (16,) and labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1}
    # The order depends on data_seed only: a fresh instance gives the same batches, another seed others.
    again = list(xor_quadrants().train_batches(16, data_seed=3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))
    assert not torch.equal(next(iter(source.train_batches(16, data_seed=4)))[0], images)
    # Starting at batch 2 skips exactly the first two.
    resumed = list(source.train_batches(16, data_seed=3, start=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, batches[2:])) and len(resumed) == 2
    # One epoch is a permutation of the fixed training set.
    epoch = torch.cat([b[0] for b in batches])
    other_epoch = torch.cat([b[0] for b in source.train_batches(16, data_seed=4)])
    assert torch.equal(epoch.flatten(1).sum(1).sort().values, other_epoch.flatten(1).sum(1).sort().values)


def test_validation_pool_is_fixed_and_disjoint_from_training():
    source = xor_quadrants()
    pool_images, pool_labels = source.validation_pool()
    assert pool_images.shape == (32, 1, 8, 8) and pool_labels.shape == (32,)
    assert torch.equal(pool_images, xor_quadrants(train_size=128).validation_pool()[0])
    training = torch.cat([b[0] for b in source.train_batches(64, data_seed=0)])
    distances = torch.cdist(pool_images.flatten(1), training.flatten(1))
    assert distances.min() > 0


def test_label_is_the_xor_of_the_bright_quadrant_position():
    images, labels = xor_quadrants(noise=1e-3, train_size=200).validation_pool()
    quadrant_means = images[:, 0].unflatten(1, (2, 4)).unflatten(3, (2, 4)).mean(dim=(2, 4))  # (N, 2, 2)
    bright = quadrant_means.flatten(1).argmax(dim=1)  # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    assert torch.equal(labels, ((bright == 1) | (bright == 2)).long())
    assert 0 < labels.float().mean() < 1
    # Both classes average to the zero image: the class is not a linear function of the pixels.
    many_images, many_labels = xor_quadrants(noise=1e-3, validation_size=4000).validation_pool()
    for label in (0, 1):
        assert many_images[many_labels == label].mean(0).abs().max() < 0.1


def test_parameters_are_checked():
    with pytest.raises(ValidationError, match="image_sise"):
        xor_quadrants(image_sise=8)
    with pytest.raises(ValidationError, match="must be even"):
        xor_quadrants(image_size=7)
    with pytest.raises(ValidationError):
        xor_quadrants(noise=0)


def write_spec(directory, **sections):
    spec = {
        "name": "xor",
        "model": {"kind": "vit", "params": TINY_VIT},
        "data": {"kind": "xor-quadrants", "params": SMALL},
        "train": {"lr": 3.0e-3, "batch_size": 8, "steps": 6, "seeds": [0]},
        "measure": {"estimator": "exact", "schedule": [0, 2, 5], "batch_size": 8},
        "tracking": {"enabled": False},
        "output": str(directory / "out"),
        **sections,
    }
    path = directory / "xor.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_spec_using_the_plugin_data_source_validates(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    assert spec.data.kind == "xor-quadrants" and spec.data.params == SMALL
    misspelt = "data.params.validation_sise: unknown parameter \\(did you mean 'validation_size'"
    with pytest.raises(ValueError, match=misspelt):
        load_spec(write_spec(tmp_path, data={"kind": "xor-quadrants", "params": {"validation_sise": 8}}))


def test_engine_trains_on_the_plugin_data_source(tmp_path):
    results = Engine(load_spec(write_spec(tmp_path))).run()
    assert [r.status for r in results] == ["FINISHED"]
    table = results[0].metrics
    assert len(table["loss"].dropna()) == 6
    assert list(table["step"][table["spectral_position"].notna()]) == [0, 2, 5]
