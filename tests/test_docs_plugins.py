"""docs/plugins.md's examples run as they stand: its data source keeps the DataSource contract and
trains through the engine, its estimator agrees with `exact`."""

import re
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

import cases
from specreach import Engine, load_spec, measure_lnp
from specreach.plugins import create, get_plugin_manager, hookimpl

PAGE = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


def example(marker: str) -> types.ModuleType:
    """The Python block after ``<!-- docs-test: marker -->``, run as a module of its own."""
    found = re.search(rf"<!-- docs-test: {marker} -->\n```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert found, f"docs/plugins.md has no '{marker}' example"
    module = types.ModuleType(f"docs_plugins_{marker.replace('-', '_')}")
    sys.modules[module.__name__] = module
    exec(compile(found.group(1), f"docs/plugins.md ({marker})", "exec"), module.__dict__)
    return module


@pytest.fixture
def registered():
    """Both examples registered through the hooks, as an installed plugin would register them."""
    data, estimator = example("data-source"), example("estimator")
    plugin = types.ModuleType("docs_plugin")

    @hookimpl
    def register_datasets(register):
        register(data.SineTeacher)

    @hookimpl
    def register_estimators(register):
        register(estimator.UnitProbes)

    plugin.register_datasets, plugin.register_estimators = register_datasets, register_estimators
    manager = get_plugin_manager()
    manager.register(plugin, name="docs_plugin")
    yield data, estimator
    manager.unregister("docs_plugin")


def test_the_data_source_keeps_the_contract(registered):
    source = create("dataset", "sine-teacher", train_size=64, validation_size=16, dimensions=4)
    info = source.info()
    assert (info.task, info.input_shape, info.train_samples) == ("regression", (4,), 64)
    batches = list(source.train_batches(16, data_seed=3))
    assert len(batches) == 4
    inputs, targets = batches[0]
    assert inputs.shape == (16, 4) and inputs.dtype == torch.float32 and targets.shape == (16, 1)
    again = create("dataset", "sine-teacher", train_size=64, validation_size=16, dimensions=4)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again.train_batches(16, data_seed=3)))
    assert not torch.equal(next(iter(source.train_batches(16, data_seed=4)))[0], inputs)
    resumed = list(source.train_batches(16, data_seed=3, start=2))
    assert len(resumed) == 2 and all(torch.equal(a[0], b[0]) for a, b in zip(resumed, batches[2:]))
    pool, pool_targets = source.validation_pool()
    assert torch.equal(pool, create("dataset", "sine-teacher", train_size=128, validation_size=16,
                                    dimensions=4).validation_pool()[0])
    assert torch.cdist(pool, torch.cat([b[0] for b in batches])).min() > 0
    assert pool_targets.abs().max() < 1 + 6 * 0.1  # sin plus the noise
    with pytest.raises(ValueError, match="dimension"):
        create("dataset", "sine-teacher", dimension=4)


def test_the_estimator_agrees_with_exact(registered, float64):
    model, loss_fn, batch_a, batch_b = cases.build("mlp")
    for b in (None, batch_b):
        ours = measure_lnp(model, loss_fn, batch_a, b, estimator="unit-probes")
        exact = measure_lnp(model, loss_fn, batch_a, b, estimator="exact")
        assert ours.estimator == "unit-probes"
        for field in ("network_magnitude", "loss_magnitude", "spectral_position", "grad_dot"):
            assert getattr(ours, field) == pytest.approx(getattr(exact, field), rel=1e-12), field
    with pytest.raises(ValueError, match="more than max_outputs"):
        measure_lnp(model, loss_fn, batch_a, estimator="unit-probes", max_outputs=1)


def test_a_spec_trains_on_the_documented_plugin(registered, tmp_path):
    spec = {
        "name": "docs-plugin",
        "model": {"kind": "random-features", "params": {"inputs": 4, "features": 16}},
        "data": {"kind": "sine-teacher", "params": {"dimensions": 4, "train_size": 64, "validation_size": 16}},
        "train": {"lr": 1.0e-2, "batch_size": 8, "steps": 4},
        "measure": {"estimator": "unit-probes", "options": {"max_outputs": 8}, "schedule": [0, 3], "batch_size": 8},
        "tracking": {"enabled": False}, "output": str(tmp_path / "out"),
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    results = Engine(load_spec(path)).run()
    assert [r.status for r in results] == ["FINISHED"], results[0].message
    table = results[0].metrics
    assert list(table["step"][table["spectral_position"].notna()]) == [0, 3]


@pytest.mark.slow  # W&B's service process starts in seconds
def test_the_documented_wandb_sink_records_each_row_once_offline(registered, tmp_path, monkeypatch):
    """The W&B example, registered as a plugin's sink and chosen in tracking.sinks, with W&B offline
    (no network): every row of the metrics table is logged once, at its step, and the run finishes."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = example("wandb-sink")
    plugin = types.ModuleType("docs_wandb_plugin")

    @hookimpl
    def register_sinks(register):
        register(sink.WandbSink)

    plugin.register_sinks = register_sinks
    logged: list[tuple[int, dict]] = []
    log = wandb.sdk.wandb_run.Run.log

    def recording(self, data, step=None, **kwargs):
        logged.append((step, dict(data)))
        return log(self, data, step=step, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", recording)
    get_plugin_manager().register(plugin, name="docs_wandb_plugin")
    try:
        spec = {
            "name": "docs-wandb",
            "model": {"kind": "random-features", "params": {"inputs": 4, "features": 16}},
            "data": {"kind": "sine-teacher", "params": {"dimensions": 4, "train_size": 64, "validation_size": 16}},
            "train": {"lr": 1.0e-2, "batch_size": 8, "steps": 6},
            "measure": {"estimator": "unit-probes", "schedule": [0, 3], "batch_size": 8},
            "tracking": {"sinks": [{"kind": "wandb", "params": {"project": "docs"}}]}, "output": str(tmp_path / "out"),
        }
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump(spec))
        (result,) = Engine(load_spec(path)).run()
    finally:
        get_plugin_manager().unregister("docs_wandb_plugin")
    assert result.status == "FINISHED", result.message
    rows = [row for _, row in result.metrics.iterrows()]
    assert [step for step, _ in logged] == [int(row["step"]) for row in rows]
    assert [metrics["loss"] for _, metrics in logged if "loss" in metrics] == pytest.approx(
        [row["loss"] for row in rows if row["loss"] == row["loss"]])
    assert list((result.output_dir / "wandb").glob("offline-run-*/run-*.wandb"))
