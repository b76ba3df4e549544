"""Recorded runs read back: `specreach runs` and `specreach export` across output folders, sweep
values typed in MLflow, and one workspace tracking store for many specs."""

import json
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from engine_helpers import write_spec
from specreach import Engine, load_spec
from specreach.engine.metrics_table import read_table
from specreach.engine.run_listing import format_runs, read_runs, summary_frame

TINY_MODEL = {"kind": "llama", "params": {"vocab": 256, "layers": 1, "heads": 2, "context": 8, "hidden": 8, "ff": 16}}


def sweep_spec(directory, name, output, lrs=("1e-3", "3e-3")):
    """A spec whose swept learning rates are written as YAML 1.1 reads them: '1e-3' is text there."""
    spec = {
        "name": name,
        "model": TINY_MODEL,
        "data": {"kind": "pydoc-text", "params": {"context": 8, "validation_size": 8}},
        "train": {"lr": 1.0e-3, "batch_size": 4, "steps": 5, "seeds": [0]},
        "measure": {"estimator": "exact", "schedule": [0, 3], "batch_size": 4, "verify": False},
        "output": str(output),
    }
    path = write_spec(directory, spec, name=f"{name}.yaml")
    text = path.read_text() + f"sweep:\n  train.lr: [{', '.join(lrs)}]\n"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Two specs with an lr sweep, run into one output folder and one workspace tracking store."""
    root = tmp_path_factory.mktemp("workspace")
    store = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    previous = os.environ.get("SPECREACH_TRACKING_URI")
    os.environ["SPECREACH_TRACKING_URI"] = store
    try:
        results = {name: Engine(load_spec(sweep_spec(root, name, root / "out"))).run() for name in ("first", "second")}
    finally:
        if previous is None:
            del os.environ["SPECREACH_TRACKING_URI"]
        else:
            os.environ["SPECREACH_TRACKING_URI"] = previous
    return root, store, results


def test_the_workspace_store_holds_the_runs_of_both_specs(workspace):
    root, store, results = workspace
    assert not (root / "out" / "first" / "mlflow.db").exists()  # the workspace store, not one per spec
    client = MlflowClient(tracking_uri=store)
    experiments = {name: client.get_experiment_by_name(name) for name in ("first", "second")}
    runs = client.search_runs([e.experiment_id for e in experiments.values()], "tags.phase = 'train'")
    assert sorted((r.data.tags["specreach.spec"], r.info.run_name) for r in runs) == sorted(
        (spec, result.name) for spec, spec_results in results.items() for result in spec_results)
    for spec_results in results.values():
        assert {result.run_id for result in spec_results} <= {r.info.run_id for r in runs}


def test_sweep_values_are_tagged_as_the_run_uses_them(workspace):
    _, store, results = workspace
    client = MlflowClient(tracking_uri=store)
    ids = [client.get_experiment_by_name(name).experiment_id for name in ("first", "second")]
    found = client.search_runs(ids, "tags.`sweep.train.lr` = '0.001'")
    assert sorted(r.info.run_name for r in found) == ["lr=1e-3-default-seed0"] * 2
    for run in found:
        assert float(run.data.params["train.lr"]) == 0.001  # the tag says what the run trained with
    assert len(client.search_runs(ids, "tags.`sweep.train.lr` = '1e-3'")) == 0
    run_json = json.loads((results["first"][0].output_dir / "run.json").read_text())
    assert run_json["sweep"] == {"train.lr": 0.001}


def test_a_spec_or_the_command_line_still_names_its_own_store(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECREACH_TRACKING_URI", "sqlite:////nonexistent/workspace.db")
    spec = load_spec(sweep_spec(tmp_path, "own", tmp_path / "out"))
    assert Engine(spec).tracking_uri == "sqlite:////nonexistent/workspace.db"
    assert Engine(spec, tracking_uri="http://127.0.0.1:1").tracking_uri == "http://127.0.0.1:1"
    spec = load_spec(sweep_spec(tmp_path, "own", tmp_path / "out"), ["tracking.uri=sqlite:////elsewhere.db"])
    assert Engine(spec).tracking_uri == "sqlite:////elsewhere.db"
    monkeypatch.delenv("SPECREACH_TRACKING_URI")
    assert Engine(load_spec(sweep_spec(tmp_path, "own", tmp_path / "out"))).tracking_uri == \
        f"sqlite:///{(tmp_path / 'out' / 'own' / 'mlflow.db').resolve()}"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "specreach.cli", *args], capture_output=True, text=True, timeout=300)


def test_runs_lists_every_run_of_several_output_folders(workspace):
    root, _, results = workspace
    done = cli("runs", str(root / "out" / "first"), str(root / "out" / "second"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["spec", "run", "status", "steps", "loss", "eval_loss", "P", "lr", "wall"]
    assert len(lines) == 1 + 4
    for spec, spec_results in results.items():
        for result in spec_results:
            table = read_table(result.output_dir / "metrics.csv")
            loss = [row["loss"] for row in table if not math.isnan(row.get("loss", math.nan))][-1]
            position = [row["spectral_position"] for row in table
                        if not math.isnan(row.get("spectral_position", math.nan))][-1]
            line = next(line.split() for line in lines if line.split()[:2] == [spec, result.name])
            assert line[2:5] == ["FINISHED", "5/5", f"{loss:.4g}"]
            assert line[5] == f"{result.final['eval_loss']:.4g}" and line[6] == f"{position:.3g}"
            assert float(line[7]) == result.output_dir.name.startswith("lr=1e-3") * 0.001 or float(line[7]) == 0.003
            assert line[8].endswith("s") and 0 < float(line[8][:-1]) < 60
    # The folder above both specs lists the same runs.
    assert format_runs(read_runs([root / "out"])) + "\n" == done.stdout


def test_runs_json_has_the_same_numbers(workspace, capsys):
    from specreach.cli import cmd_runs, parse

    root, _, results = workspace
    assert cmd_runs(parse(["runs", "--json", str(root / "out")])) == 0
    records = json.loads(capsys.readouterr().out)
    assert len(records) == 4
    first = next(r for r in records if r["spec"] == "first" and r["run"] == results["first"][1].name)
    assert first["sweep.train.lr"] == 0.003 and first["status"] == "FINISHED" and first["steps_done"] == 5
    assert first["eval_loss"] == pytest.approx(results["first"][1].final["eval_loss"], rel=1e-12)
    assert first["wall_seconds"] > 0


@pytest.mark.parametrize("format", ["parquet", "csv"])
def test_export_writes_every_row_of_every_run_with_its_sweep_values(workspace, tmp_path, format):
    root, _, results = workspace
    output = tmp_path / f"all.{format}"
    done = cli("export", str(root / "out"), "--format", format, "--output", str(output))
    assert done.returncode == 0, done.stderr
    frame = pd.read_parquet(output) if format == "parquet" else pd.read_csv(output)
    assert done.stdout.strip() == f"{output}: {len(frame)} metric rows of 4 runs"
    assert list(frame.columns[:4]) == ["spec", "run", "status", "phase"]
    assert frame["sweep.train.lr"].dtype.kind == "f"
    for spec, spec_results in results.items():
        for result in spec_results:
            table = pd.DataFrame(read_table(result.output_dir / "metrics.csv"))
            mine = frame[(frame["spec"] == spec) & (frame["run"] == result.name)].reset_index(drop=True)
            assert len(mine) == len(table)
            assert set(mine["sweep.train.lr"]) == {0.001 if result.name.startswith("lr=1e-3") else 0.003}
            assert set(mine["architecture"]) == {"llama"} and set(mine["size"]) == {"default"}
            for column in table.columns:
                pd.testing.assert_series_equal(mine[column].astype(float), table[column].astype(float),
                                               check_names=False, rtol=1e-12)


def test_a_damaged_or_abandoned_run_is_listed_with_what_is_wrong(workspace, tmp_path):
    import shutil

    root, _, results = workspace
    copy = tmp_path / "copy"
    shutil.copytree(root / "out" / "first", copy)
    runs_folder = copy / "runs"
    damaged, abandoned = sorted(runs_folder.iterdir())
    (damaged / "status.json").write_text("{not json")
    status = json.loads((abandoned / "status.json").read_text())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (abandoned / "status.json").write_text(json.dumps({**status, "status": "RUNNING", "pid": dead.pid}))
    runs = read_runs([copy])
    assert [run.status for run in runs] == ["DAMAGED", "DIED"]
    assert "status.json" in runs[0].problem
    text = format_runs(runs)
    assert f"{damaged.name}: " in text.splitlines()[-1] and "status.json" in text.splitlines()[-1]
    assert summary_frame(runs)["status"].tolist() == ["DAMAGED", "DIED"]


def test_runs_needs_a_folder_with_runs(tmp_path):
    done = cli("runs", str(tmp_path))
    assert done.returncode == 2 and f"no runs under {tmp_path}" in done.stderr
    with pytest.raises(FileNotFoundError, match="no such folder"):
        read_runs([tmp_path / "missing"])


def test_rerunning_a_finished_spec_says_so_and_points_at_the_store_used(workspace):
    """The workspace store in SPECREACH_TRACKING_URI: the closing hint opens that store, not the output folder."""
    root, store, results = workspace
    done = subprocess.run([sys.executable, "-m", "specreach.cli", "run", str(root / "first.yaml")],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SPECREACH_TRACKING_URI": store})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "nothing to run: all 2 runs had finished before; rerun with --overwrite to run them again"
    for result in results["first"]:
        assert any(line.split()[:2] == [result.name, "FINISHED"] and line.endswith("skipped (already finished)")
                   for line in lines), done.stdout
    assert f"tracking: {store}  (view with: specreach ui {store})" in lines
    from specreach.cli import build_parser

    args = build_parser().parse_args(["ui", store])
    assert args.store == store


def test_ui_names_what_it_cannot_open(tmp_path):
    done = cli("ui", f"sqlite:///{tmp_path / 'none.db'}")
    assert done.returncode == 2 and f"no MLflow store at {tmp_path / 'none.db'}" in done.stderr
    done = cli("ui", "http://127.0.0.1:5000")
    assert done.returncode == 2 and "a tracking server serves its own UI" in done.stderr


def test_a_large_sweep_ends_with_a_table_not_a_line_per_run(tmp_path):
    from specreach.engine.outcomes import outcome_lines
    from specreach.engine.runs import RunResult

    results = [RunResult(f"lr={lr}-{size}-seed{seed}", "FAILED" if (lr, size, seed) == (3, "large", 4) else
                         "FINISHED", None, tmp_path, "boom" if size == "large" and seed == 4 and lr == 3 else "",
                         skipped=lr == 1)
               for lr in (1, 2, 3) for size in ("small", "large") for seed in range(30)]
    sizes = {result.name: result.name.split("-")[1] for result in results}
    lines = outcome_lines(results, sizes, tmp_path)
    assert lines[0] == "180 runs: 119 finished, 60 skipped (already finished), 1 failed"
    assert lines[1].split() == ["size", "finished", "skipped", "failed"]
    assert lines[2].split() == ["small", "60", "30", "0"] and lines[3].split() == ["large", "59", "30", "1"]
    assert lines[4:] == ["not finished:", "  lr=3-large-seed4  FAILED  boom"]
