"""Every ready spec in specs/ validates, and every paper experiment has a CPU variant."""

from pathlib import Path

import pytest

from specreach import Engine, load_spec

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))
EXPERIMENTS = ["rfm-validation", "scaling-simplestories", "scaling-cifar5m-nextpixel", "linear-probes",
               "vit-cifar5m", "vit-cifar5m-mup", "entk-spectrum", "isocompute", "hutchinson-convergence"]


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_spec_validates_and_expands(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    runs = Engine(spec).runs()
    assert runs and len({r.name for r in runs}) == len(runs)


def test_every_experiment_has_a_full_and_a_cpu_spec():
    names = {p.stem for p in SPECS}
    for experiment in EXPERIMENTS:
        assert experiment in names and f"{experiment}-cpu" in names, experiment


def test_paper_settings_of_the_scaling_specs():
    spec = load_spec(SPECS[0].parent / "scaling-simplestories.yaml")
    runs = Engine(spec).runs()
    assert len(runs) == 8 * 3  # Table 1 × three model seeds
    assert {r.train.data_seed for r in runs} == {0}  # the data order is fixed across model seeds
    rates = {r.size: r.train.lr for r in runs}
    assert rates["llama-simplestories-1.2m"] == 1e-2 and rates["llama-simplestories-134m"] == 1.5e-4
    assert spec.train.steps == 66116 and spec.train.batch_size == 32 and spec.train.warmup_steps == 100
    assert spec.data.params["validation_size"] == 160 and spec.measure.batch_size == 32
    cifar = load_spec(SPECS[0].parent / "scaling-cifar5m-nextpixel.yaml")
    assert cifar.data.params["validation_size"] == 4096 and cifar.measure.batch_size == 128
