"""What cannot work is refused by `specreach validate` with FILE:LINE (or the override) and a hint, and
no input gives a raw Python error; overrides in Hydra's grammar."""

from __future__ import annotations

import pytest
import yaml

from engine_helpers import TINY_SPEC, write_spec
from specreach.config import SpecError, check_spec, load_spec


@pytest.fixture
def validate(capsys):
    from types import SimpleNamespace

    from specreach.cli import main

    def run(*args):
        capsys.readouterr()
        code = main(["validate", *map(str, args)])
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    return run


def spec_text(**changes) -> str:
    spec = {**TINY_SPEC, **changes}
    return yaml.safe_dump(spec, sort_keys=False)


def line_of(path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


def refused(validate, path, *overrides) -> str:
    done = validate(path, *overrides)
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr
    return done.stderr.strip()


# --- the YAML file -----------------------------------------------------------------------------------

def test_duplicate_keys_are_refused_at_the_second_one(tmp_path, validate):
    path = tmp_path / "dup.yaml"
    path.write_text(spec_text().replace("  lr: 0.003\n", "  lr: 0.003\n  lr: 0.3\n"))
    error = refused(validate, path)
    second = line_of(path, "lr: 0.3")
    assert f"{path}:{second}: train.lr: duplicate key (also on line {second - 1})" in error


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path, validate):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^10 values
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n" + spec_text())
    error = refused(validate, path)
    assert "aliases expand this file to more than 20,000 values" in error and error.startswith(f"{path}:")


def test_recursive_aliases_and_deep_nesting_are_refused(tmp_path, validate):
    path = tmp_path / "loop.yaml"
    path.write_text("loop: &loop [1, *loop]\n" + spec_text())
    assert f"{path}:1: (spec): alias *loop refers to the collection it is part of" in refused(validate, path)
    path.write_text("deep: " + "[" * 5000 + "]" * 5000 + "\n" + spec_text())
    assert f"{path}:1: (spec): nested deeper than 32 levels" in refused(validate, path)


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, validate):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(spec_text().replace("name: tiny", "name: tiny  # Größe").encode("latin-1"))
    assert refused(validate, path) == f"{path}:1: (spec): not UTF-8 text (byte 0xf6 at column 17); save the file " \
                                       "as UTF-8"


def test_environment_variables_are_not_read_into_a_spec(tmp_path, validate, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    path = tmp_path / "env.yaml"
    path.write_text(spec_text(tracking={"experiment": "${oc.env:SECRET_TOKEN}"}))
    error = refused(validate, path)
    assert "tracking.experiment: reads environment variable SECRET_TOKEN: a spec does not read the environment" \
        in error and "hunter2" not in error
    error = refused(validate, write_spec(tmp_path), "train.lr=${oc.env:SECRET_TOKEN}")
    assert error.startswith("override 'train.lr=${oc.env:SECRET_TOKEN}': train.lr: reads environment variable")


# --- values that cannot work -------------------------------------------------------------------------

CANNOT_WORK = {
    "duplicate seeds": ({"train": {**TINY_SPEC["train"], "seeds": [0, 1, 0]}}, "seeds:",
                        "train.seeds: Value error, seed 0 given more than once: each seed is one run"),
    "a boolean learning rate": ({"train": {**TINY_SPEC["train"], "lr": True}}, "lr:",
                                "train.lr: expected a number, got true"),
    "a boolean model parameter": ({"model": {**TINY_SPEC["model"], "params": {**TINY_SPEC["model"]["params"],
                                                                               "layers": True}}},
                                  "layers:", "model.params.layers: expected a number, got true"),
    "an infinite number": ({"train": {**TINY_SPEC["train"], "weight_decay": float("inf")}}, "weight_decay:",
                           "train.weight_decay: inf is not a usable number here"),
    "nan as text": ({"train": {**TINY_SPEC["train"], "eps": "nan"}}, "  eps:",
                    "train.eps: Input should be a finite number"),
    "betas outside [0, 1)": ({"train": {**TINY_SPEC["train"], "betas": [0.9, 1.0]}}, "betas:",
                             "train.betas: Value error, AdamW betas must lie in [0, 1), got [0.9, 1.0]"),
    "a negative schedule step": ({"measure": {**TINY_SPEC["measure"], "schedule": [0, -5]}}, "schedule:",
                                 "measure.schedule: Value error, measured steps count from 0; -5 is not a training step"),
    "a schedule step past the end": ({"measure": {**TINY_SPEC["measure"], "schedule": [0, 12]}}, "schedule:",
                                     "measure.schedule: step 12 is not a training step: train.steps is 12"),
    "windows that do not fit": ({"measure": {**TINY_SPEC["measure"], "schedule": {"windows": 8,
                                                                                   "steps_per_window": 2}}},
                                "schedule:", "measure.schedule: 8 windows of 2 steps after 1 single steps need 17"),
    "absurd probes": ({"measure": {**TINY_SPEC["measure"], "probes": 100000000}}, "probes:",
                      "measure.probes: Input should be less than or equal to 4096"),
    "absurd seed count": ({"train": {**TINY_SPEC["train"], "seeds": 10**9}}, "seeds:",
                          "more than the 10000 a spec may sweep"),
    "a size name that escapes": ({"model": {**TINY_SPEC["model"], "sizes": {"../../x": {"hidden": 8, "ff": 16}}}},
                                 "sizes:", "model.sizes: Value error, size name '../../x' cannot name a folder"),
    "a spec named ..": ({"name": ".."}, "name:", "name: Value error, name '..' cannot name a folder"),
    "an experiment name MLflow rejects": ({"tracking": {"experiment": ""}}, "experiment:",
                                          "tracking.experiment: String should have at least 1 character"),
    "a kind given as a mapping": ({"model": {**TINY_SPEC["model"], "kind": {"name": "llama"}}}, "kind:",
                                  "model.kind: must be a name (text), not a mapping"),
    "a device that does not exist anywhere": ({"train": {**TINY_SPEC["train"], "device": "tpu"}}, "device:",
                                              "train.device: Value error, device 'tpu' is not one of"),
}


@pytest.mark.parametrize("case", list(CANNOT_WORK))
def test_what_cannot_work_is_refused_at_its_line(tmp_path, validate, case):
    changes, key_line, expected = CANNOT_WORK[case]
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(**changes))
    error = refused(validate, path)
    matching = [line for line in error.splitlines() if expected.replace("Value error, ", "") in line]
    assert matching, error
    assert matching[0].startswith(f"{path}:{line_of(path, key_line)}: "), (matching[0], key_line)


def test_a_capitalised_or_dotted_key_gets_a_suggestion_not_a_traceback(tmp_path, validate):
    path = tmp_path / "keys.yaml"
    path.write_text(spec_text().replace("measure:", "Measure:") + "train.LR: 0.1\n")
    error = refused(validate, path)
    assert f"{path}:{line_of(path, 'Measure:')}: Measure: unknown key (did you mean 'measure'?)" in error
    assert "train.LR: unknown key: dotted keys are not expanded in a spec file; write train: {LR: ...}" in error
    path.write_text(spec_text().replace("  lr: 0.003", "  LR: 0.003"))
    assert "train.LR: unknown key (did you mean 'lr'?)" in refused(validate, path)


def test_cuda_on_a_machine_without_a_gpu_is_refused_here_and_allowed_elsewhere(tmp_path, validate, monkeypatch):
    import specreach.machine as machine

    monkeypatch.setattr(machine, "gpu_count", lambda: 0)
    path = tmp_path / "gpu.yaml"
    path.write_text(spec_text(train={**TINY_SPEC["train"], "device": "cuda"}))
    error = refused(validate, path)
    assert error.startswith(f"{path}:{line_of(path, 'device:')}: train.device: this machine has no CUDA GPU")
    assert "train.device=auto" in error
    assert validate(path, "--anywhere").returncode == 0
    assert validate(path, "execution.kind=ray").returncode == 0  # the runs execute on a cluster
    monkeypatch.setattr(machine, "gpu_count", lambda: 2)
    assert "this machine has 2 CUDA GPUs (cuda:0 … cuda:1)" in refused(validate, path, "train.device=cuda:2")


def test_a_size_too_big_for_this_machine_is_warned_with_its_estimate(tmp_path, validate, monkeypatch):
    import specreach.engine.sizes as sizes

    monkeypatch.setattr(sizes, "memory_bytes", lambda: 16 * 10**9)
    path = write_spec(tmp_path)
    done = validate(path, "model.sizes.m.hidden=65536", "model.sizes.m.ff=131072")
    assert done.returncode == 0
    count = 256 * 65536 * 2 + 65536 + (4 * 65536 * 65536 + 3 * 65536 * 131072 + 2 * 65536)  # one layer
    assert f"warning: model size 'm' has about {count:,} parameters: training needs at least " \
           f"{count * 16 / 1e9:.3g} GB (weights, gradients and AdamW state in float32); this machine has 16 GB" \
        in done.stderr
    assert "model size 's'" not in done.stderr


def test_the_size_estimate_is_the_built_models_parameter_count():
    import torch

    from specreach.engine.sizes import parameter_estimate
    from specreach.models.parameterization import ModelRecipe, build_model

    cases = [("llama", {"vocab": 256, "layers": 2, "hidden": 24, "ff": 40, "heads": 5, "context": 16}),
             ("vit", {"image_size": 16, "channels": 3, "patch": 4, "hidden": 24, "mlp": 50, "heads": 4, "layers": 2,
                      "classes": 7}),
             ("random-features", {"inputs": 12, "features": 30})]
    for kind, params in cases:
        with torch.device("meta"):
            model = build_model(ModelRecipe(kind=kind, params=params))
        assert parameter_estimate(kind, params) == sum(p.numel() for p in model.parameters()), kind


# --- overrides -----------------------------------------------------------------------------------------

def test_override_errors_are_blamed_on_the_override(tmp_path, validate):
    path = write_spec(tmp_path)
    assert refused(validate, path, "train.lr=fast") == (
        "override 'train.lr=fast': train.lr: Input should be a valid number, unable to parse string as a number")
    assert refused(validate, path, "train.seeds.5=1") == (
        "override 'train.seeds.5=1': train.seeds.5: train.seeds has 1 value; index 5 is out of range: set the "
        "whole list, e.g. train.seeds=[...]")
    assert refused(validate, path, "train.LR=1") == (
        "override 'train.LR=1': train.LR: no key 'LR' in train (did you mean 'lr'?)")
    assert refused(validate, path, "train.lr=[1,") .startswith("override 'train.lr=[1,': train.lr: cannot parse it")
    assert refused(validate, path, "+train.lr=1") == (
        "override '+train.lr=1': train.lr: the spec already sets it; write train.lr=VALUE to change it")


def test_hydra_grammar_sweeps_adds_deletes_and_quotes(tmp_path):
    path = write_spec(tmp_path)
    spec = load_spec(path, ["train.lr=1e-4,1e-3", "train.seeds=range(0,3)", "+train.grad_clip=1.0",
                            "~measure.probes", "tracking.run_name='a b, c'"])
    assert spec.sweep == {"train.lr": [1e-4, 1e-3]} and spec.train.seeds == [0, 1, 2]
    assert spec.train.grad_clip == 1.0 and spec.measure.probes is None and spec.tracking.run_name == "a b, c"
    from specreach.engine.runs import TrackingTarget, expand

    names = [run.name for run in expand(spec, tmp_path, TrackingTarget.off())]
    assert names[:2] == ["lr=0.0001-s-seed0", "lr=0.0001-m-seed0"] and len(names) == 12
    swept = load_spec(path, ["sweep.train.lr=[1e-4,1e-3]", "sweep.train.weight_decay=[0.0,0.1]"])
    assert swept.sweep == {"train.lr": [1e-4, 1e-3], "train.weight_decay": [0.0, 0.1]}
    with pytest.raises(SpecError, match="a sweep axis takes a list of values"):
        load_spec(path, ["sweep.train.lr=1e-3"])


def test_one_model_form_overrides_the_other(tmp_path):
    path = write_spec(tmp_path)
    spec = load_spec(path, ["model.presets=[llama-simplestories-1.2m]"])
    assert spec.model.presets == ["llama-simplestories-1.2m"] and spec.model.kind is None
    presets = write_spec(tmp_path, {**TINY_SPEC, "model": {"presets": ["llama-simplestories-1.2m"]}}, name="p.yaml")
    back = load_spec(presets, ["model.kind=llama", "model.params={vocab: 256, layers: 1, heads: 2, context: 16, "
                                                   "hidden: 8, ff: 16}"])
    assert back.model.kind == "llama" and back.model.presets is None


def test_flags_and_overrides_in_any_order(tmp_path):
    from engine_helpers import cli

    done = cli("run", write_spec(tmp_path), "--dry-run", "train.steps=40", "--output", tmp_path / "out",
               "train.seeds=[0,1]")
    assert done.returncode == 0, done.stderr
    assert "4 runs:" in done.stdout and "steps: 40" in done.stdout
    unknown = cli("run", write_spec(tmp_path), "--dry-runn")
    assert unknown.returncode == 2 and "unrecognized arguments: --dry-runn" in unknown.stderr


def test_check_spec_warns_nothing_for_the_tiny_spec(tmp_path):
    spec, warnings = check_spec(write_spec(tmp_path))
    assert spec.name == "tiny" and warnings == []


def test_verbose_shows_what_quiet_hides(tmp_path):
    from engine_helpers import cli

    spec = write_spec(tmp_path, {**TINY_SPEC, "model": {**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}},
                                 "train": {**TINY_SPEC["train"], "steps": 3}, "measure": {**TINY_SPEC["measure"],
                                                                                           "schedule": [0]}})
    loud = cli("run", spec, "--output", tmp_path / "out", "-v")
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "INFO mlflow.store.db.utils: Creating initial MLflow database tables" in loud.stderr


# --- round two: what reads outside the spec, sweep values, sizes ----------------------------------------

def test_no_resolver_reads_the_environment_however_it_is_assembled(tmp_path, validate, monkeypatch):
    """oc.decode turns text into an interpolation: '$' from one key and '{oc.env:…}' from another made
    ${oc.env:…}, which spec.yaml and MLflow params would then hold (in the file or as overrides)."""
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    decode = "${oc.decode:'${tracking.experiment}{oc.env:SECRET_TOKEN}'}"
    path = tmp_path / "decode.yaml"
    path.write_text(spec_text(tracking={"experiment": "$", "run_name": decode}))
    error = refused(validate, path)
    assert "hunter2" not in error
    assert f"{path}:{line_of(path, 'run_name:')}: tracking.run_name: calls the resolver 'oc.decode': a spec may " \
           "refer to its own keys" in error
    error = refused(validate, write_spec(tmp_path), "tracking.experiment=$", f'tracking.run_name="{decode}"')
    assert "hunter2" not in error
    assert f"override 'tracking.run_name=\"{decode}\"': tracking.run_name: calls the resolver 'oc.decode'" in error
    # Without any resolver, references alone can still spell '${oc.env:…}': refused once resolved, since
    # spec.yaml holds the resolved text and --resume would resolve it again.
    path.write_text(spec_text(tracking={"experiment": "$", "run_name": "${tracking.experiment}{oc.env:SECRET_TOKEN}"}))
    error = refused(validate, path)
    assert "hunter2" not in error
    assert f"{path}:{line_of(path, 'run_name:')}: tracking.run_name: resolves to text that is an interpolation " \
           "again" in error
    assert validate(write_spec(tmp_path), "tracking.run_name=${name}-parent").returncode == 0  # a reference


def test_sweep_values_are_checked_as_their_keys_type_and_must_differ(tmp_path, validate):
    path = tmp_path / "sweep.yaml"
    path.write_text(spec_text() + "sweep:\n  train.lr: [true, 0.003]\n  train.steps: [12, 12.0]\n")
    error = refused(validate, path)
    assert f"{path}:{line_of(path, 'train.lr:')}: sweep.train.lr.0: expected a number, got true" in error
    assert f"{path}:{line_of(path, 'train.steps:')}: sweep.train.steps.1: 12.0 means the same as 12 (12) for " \
           "train.steps: each value is one set of runs" in error
    assert refused(validate, write_spec(tmp_path), "sweep.train.lr=[1,1.0]") == (
        "override 'sweep.train.lr=[1,1.0]': sweep.train.lr.1: 1.0 means the same as 1 (1.0) for train.lr: each value "
        "is one set of runs; give it once")
    assert "sweep.data.params.context.0: expected a number, got true" in refused(validate, write_spec(tmp_path),
                                                                                 "data.params.context=true,16")
    assert validate(write_spec(tmp_path), "sweep.train.lr=['1e-3',0.003]").returncode == 0  # YAML 1.1's text 1e-3


def test_a_sweep_of_a_million_runs_is_counted_not_expanded(tmp_path):
    import time

    from engine_helpers import cli

    started = time.monotonic()
    done = cli("validate", write_spec(tmp_path), "sweep.train.lr=range(1,101)", "sweep.train.eps=range(1,101)",
               "sweep.train.weight_decay=range(1,101)", timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "sweep: 1,000,000 sweep combinations × 2 sizes × 1 seed make 2,000,000 runs, more than the 10,000 one " \
           "spec may expand to" in done.stderr


def test_sizes_of_runs_and_schedules_are_bounded_at_validate(tmp_path, validate):
    """Each was valid before, then failed in the run (Errno 36, MemoryError, 'value cannot be converted to type
    float without overflow' in AdamW)."""
    path = write_spec(tmp_path)
    long_size = "a" * 300
    assert f"model.sizes.{long_size}: makes run names of 306 characters, but a folder's name holds at most 255" in \
        refused(validate, path, f"model.sizes={{{long_size}: {{hidden: 8, ff: 16}}}}")
    assert "measure.schedule: measures 1,000,000,000 of the 1,000,000,000 training steps, more than the 1,000,000 a " \
           "run may measure" in refused(validate, path, "train.steps=1e9", "measure.schedule={every: 1}")
    assert "train.lr: 1e+300 makes AdamW's first update 1e+301, beyond float32's range (3.4e+38), so the run could " \
           "not take a step" in refused(validate, path, "train.lr=1e300")
    assert "measure.batch_size: 64 is more than the 16 samples of the validation pool (data.params.validation_size) " \
           "that batch B is drawn from" in refused(validate, path, "measure.batch_size=64")
    for overrides in (["measure.batch_size=16"], ["train.steps=1e9"]):
        assert validate(path, *overrides).returncode == 0, overrides


def test_deep_brackets_a_folder_for_a_spec_and_zero_workers_are_told_what_to_do(tmp_path):
    from engine_helpers import cli

    path = write_spec(tmp_path)
    done = cli("validate", path, "train.lr=" + "[" * 3000 + "]" * 3000)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "train.lr: nested deeper than 32 levels of brackets" in done.stderr
    done = cli("validate", tmp_path)
    assert done.returncode == 1 and f"{tmp_path}: (spec): is a folder, not a spec file; give the YAML file itself " \
                                    f"(e.g. {tmp_path / 'spec.yaml'})" in done.stderr
    done = cli("run", path, "--executor", "processes", "--workers", "0", "--dry-run")
    assert done.returncode == 2 and "argument --workers: 0: give at least 1 worker process" in done.stderr


BROKEN = """\
name: broken
model:
  kind: llama
  params: {vocab: 256, layers: 2, heads: 2, context: 64, hiddn: 3}
  sizes: {small: {hidden: 32, ff: 86}}
data: {kind: pydoc-txt, params: {context: 64}}
train: {lr: 1, warmup_steps: 20, batch_size: 16, steps: 400, seeds: [0]}
train: {lr: -1}
measure: {estimator: hutchinson, probes: 8, schedule: {windows: 8, steps_per_window: 3}, foo: 1}
sweep: {train.lrr: [1, 2]}
"""


def test_a_broken_spec_gets_every_problem_in_one_pass_each_once(tmp_path):
    """Duplicate keys, kinds and parameters, values and a misspelt swept key: one run of validate says all."""
    from engine_helpers import cli

    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    done = cli("validate", path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"{path}:8: train: duplicate key (also on line 7); YAML would keep only the last silently: keep one",
        f"{path}:4: model.params.hiddn: unknown parameter (did you mean 'hidden'?)",
        f"{path}:6: data.kind: unknown data kind 'pydoc-txt' (did you mean 'pydoc-text'?)",
        f"{path}:10: sweep.train.lrr: no key 'lrr' in train (did you mean 'train.lr'?)",
        f"{path}:8: train.lr: Input should be greater than 0",
        f"{path}:9: measure.foo: unknown key (valid: enabled, estimator, options, probes, target_rse, max_probes, schedule, validation_size, "
        "batch_size, cross_batch, fixed_batch, verify)",
    ]


def test_a_misspelt_swept_key_of_a_valid_spec_gets_a_suggestion(validate, tmp_path):
    path = write_spec(tmp_path)
    message = refused(validate, path, "sweep={train.lrr: [0.001, 0.003], data.params.contxt: [8]}")
    assert "sweep.train.lrr: no key 'lrr' in train (did you mean 'train.lr'?)" in message
    assert "sweep.data.params.contxt: no key 'contxt' in data.params (did you mean 'data.params.context'?)" in message
    assert "Extra inputs" not in message


def test_a_model_whose_outputs_miss_the_task_fails_at_validate_and_dry_run(tmp_path):
    """A language model's 256 outputs on 10 digit classes: found from the spec, before any model is built."""
    from engine_helpers import cli

    path = write_spec(tmp_path, {**TINY_SPEC, "data": {"kind": "digits"}})
    expected = "model.presets.0: model 'llama-cifar5m-102.6k' has 256 outputs but task 'classification' of data " \
               "'digits' needs 10 (its 10 classes)"
    done = cli("validate", path, "model={presets: [llama-cifar5m-102.6k]}")
    assert done.returncode == 1 and expected in done.stderr, done.stderr
    done = cli("run", path, "--dry-run", "model={presets: [llama-cifar5m-102.6k]}")
    assert done.returncode == 2 and expected in done.stderr and not done.stdout
