"""Specs: loading, overrides, and errors that point at FILE:LINE with a suggestion."""

import json
import subprocess
import sys

import pytest

from engine_helpers import TINY_SPEC, write_spec
from specreach.config import SpecError, load_spec


@pytest.fixture
def validate(capsys):
    """`specreach validate ARGS` in-process; returns an object with returncode, stdout, stderr."""

    def run(*args, cwd=None):
        from types import SimpleNamespace

        from specreach.cli import main

        capsys.readouterr()
        returncode = main(["validate", *map(str, args)])
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=returncode, stdout=captured.out, stderr=captured.err)

    return run


def test_a_valid_spec_loads_and_expands(tmp_path):
    spec = load_spec(write_spec(tmp_path))
    assert spec.name == "tiny" and spec.train.lr == 3e-3
    assert [m[0] for m in spec.model.members()] == ["s", "m"]


def test_overrides_change_values_and_lists(tmp_path):
    path = write_spec(tmp_path)
    spec = load_spec(path, ["train.lr=1e-2", "train.seeds=[1,2]", "measure.probes=3", "train.grad_clip=1.0"])
    assert spec.train.lr == 1e-2 and spec.train.seeds == [1, 2] and spec.measure.probes == 3
    assert spec.train.grad_clip == 1.0  # a valid key the YAML did not set


def test_interpolation(tmp_path):
    spec = dict(TINY_SPEC, data={"kind": "pydoc-text", "params": {"context": "${model.params.context}"}})
    assert load_spec(write_spec(tmp_path, spec)).data.params["context"] == 16


BROKEN = {
    "unknown key": ("train:\n  lrr: 1", "train.lrr: unknown key (did you mean 'lr'?)"),
    "wrong type": ("train:\n  batch_size: many", "train.batch_size: Input should be a valid integer"),
    "negative learning rate": ("train:\n  lr: -0.1", "train.lr: Input should be greater than 0"),
    "unknown model kind": ("model:\n  kind: lama", "model.kind: unknown model kind 'lama' (did you mean 'llama'?)"),
    "unknown data kind": ("data:\n  kind: pydoc-txt", "data.kind: unknown data kind 'pydoc-txt' (did you mean 'pydoc-text'?)"),
    "unknown preset": ("model:\n  presets: [llama-simplestories-1.3m]",
                       "model.presets.0: unknown preset 'llama-simplestories-1.3m' (did you mean"),
    "unknown model parameter": ("model:\n  kind: llama\n  params: {vocab: 256, layers: 1, heads: 2, context: 16, hiden: 8, ff: 16}",
                                "model.params.hiden: unknown parameter (did you mean 'hidden'?)"),
    "parameters that are not a mapping": ("data:\n  kind: digits\n  params: 5",
                                          "data.params: expected a mapping of parameters"),
    "unknown estimator": ("measure:\n  estimator: hutchinsn", "measure.estimator: unknown estimator 'hutchinsn' (did you mean 'hutchinson'?)"),
    "probes for exact": ("measure:\n  estimator: exact\n  probes: 4", "measure: Value error, estimator 'exact' draws no probes"),
    "lr for an unknown size": ("train:\n  lr_per_size: {xl: 0.1}", "train.lr_per_size: names sizes that the model does not sweep"),
    "missing section": ("name: only-a-name", "model: Field required"),
    "bad name": ("name: 'has spaces'", "name: name 'has spaces' cannot name a folder or an MLflow key"),
}


def _replace_sections(tmp_path, text):
    """The tiny spec with the sections in ``text`` replaced (so line numbers are in ``text``)."""
    import yaml

    replacement = yaml.safe_load(text)
    spec = {k: v for k, v in TINY_SPEC.items() if k not in replacement}
    path = tmp_path / "broken.yaml"
    body = yaml.safe_dump(spec, sort_keys=False) if replacement.keys() != {"name"} else ""
    path.write_text(text + "\n" + body)
    return path


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_specs_fail_with_file_line_and_suggestion(tmp_path, validate, case):
    text, expected = BROKEN[case]
    path = _replace_sections(tmp_path, text)
    done = validate(path, cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    matching = [line for line in lines if expected.replace("Value error, ", "") in line.replace("Value error, ", "")]
    assert matching, lines
    file_line, message = matching[0].split(": ", 1)
    assert file_line.startswith(str(path) + ":")
    line = int(file_line.rsplit(":", 1)[1])
    key = expected.split(":")[0].split(".")[-1]
    if key not in ("name", "model", "measure", "0"):
        assert key in path.read_text().splitlines()[line - 1], (line, matching[0])
    assert not list(tmp_path.glob("runs")), "validation must not create a run"


def test_malformed_yaml(tmp_path, validate):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel: [unclosed\ndata: {}\n")
    done = validate(path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"{path}:3: (spec): malformed YAML")


def test_empty_file(tmp_path, validate):
    path = tmp_path / "empty.yaml"
    path.write_text("\n")
    done = validate(path)
    assert done.returncode == 1 and f"{path}:1: (spec): the spec file is empty" in done.stderr


def test_missing_file(tmp_path, validate):
    done = validate(tmp_path / "nope.yaml")
    assert done.returncode == 1 and "no such spec file" in done.stderr


def test_bad_override_suggests_the_key(tmp_path, validate):
    done = validate(write_spec(tmp_path), "train.lr=1e-3", "train.warmup=5")
    assert done.returncode == 1
    assert "override 'train.warmup=5': train.warmup: no key 'warmup' in train (did you mean 'warmup_steps'?)" \
        in done.stderr


def test_override_without_equals(tmp_path):
    with pytest.raises(SpecError, match="override 'train.lr': train.lr: an override reads KEY=VALUE"):
        load_spec(write_spec(tmp_path), ["train.lr"])


def test_override_of_an_unknown_plugin_parameter(tmp_path):
    with pytest.raises(SpecError, match="no key 'hiden' in model.params \\(did you mean 'hidden'\\?\\)"):
        load_spec(write_spec(tmp_path), ["model.params.hiden=4"])


def test_validate_runs_as_a_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "specreach.cli", "validate", str(tmp_path / "x.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and f"{tmp_path / 'x.yaml'}:1: (spec): no such spec file" in done.stderr


def test_schema_is_json_with_every_section():
    done = subprocess.run([sys.executable, "-m", "specreach.cli", "schema"], capture_output=True, text=True)
    schema = json.loads(done.stdout)
    assert {"name", "model", "data", "train", "measure", "probe", "tracking", "output"} <= set(schema["properties"])


def test_sweeps_and_seed_linked_parameters_expand_to_runs(tmp_path):
    from specreach import Engine

    spec = load_spec(write_spec(tmp_path), ["sweep={train.weight_decay: [0.0, 0.1]}", "train.seeds=2",
                                            "train.seed_params={train.data_seed: 10}"])
    runs = Engine(spec).runs()
    assert [r.name for r in runs] == [f"weight_decay={wd}-{size}-seed{seed}" for wd in (0.0, 0.1)
                                      for seed in (0, 1) for size in ("s", "m")]
    assert {(r.train.weight_decay, r.seed, r.train.data_seed) for r in runs} == {
        (wd, seed, 10 + seed) for wd in (0.0, 0.1) for seed in (0, 1)}
    assert runs[0].sweep == {"train.weight_decay": 0.0}


def test_a_sweep_value_that_breaks_the_spec_is_reported(tmp_path):
    with pytest.raises(SpecError, match="sweep.train.lr: with {'train.lr': -1}"):
        load_spec(write_spec(tmp_path), ["sweep={train.lr: [0.1, -1]}"])


def test_flops_budget_sets_steps_per_size(tmp_path):
    from specreach import Engine
    from specreach.engine.training import build_data, total_steps
    from specreach.models.parameterization import build_model

    spec = load_spec(write_spec(tmp_path), ["train.steps=null", "train.flops=1.0e+9"])
    for run in Engine(spec).runs():
        parameters = sum(p.numel() for p in build_model(run.recipe).parameters())
        tokens = run.train.batch_size * 16  # batch × context
        assert total_steps(run, build_data(run), parameters) == round(1.0e9 / (6 * parameters * tokens))
