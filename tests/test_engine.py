"""The engine end to end, with a real MLflow store (SQLite) and a real MLflow server."""

import json
import math
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from engine_helpers import TINY_SPEC, cli, free_port, start_mlflow_server, stop_process_group, write_spec
from specreach import Engine, LNPMonitor, load_spec
from specreach.engine import MlflowSink, MonitorConfig, TableSink
from specreach.engine.metrics_table import read_table
from specreach.engine.tasks import token_cross_entropy
from specreach.tracking import metric_history, read_runs

COMPONENTS = ["spectral_position", "loss_magnitude", "network_magnitude", "loss_magnitude_normalized",
              "network_magnitude_normalized"]


def measured_steps(rows):
    return sorted({r["step"] for r in rows if isinstance(r.get("spectral_position"), float)
                   and math.isfinite(r["spectral_position"])})


def test_quickstart_scaled_down_through_the_cli(tmp_path):
    spec_path = write_spec(tmp_path)
    done = cli("run", spec_path, "--output", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "out" / "tiny"
    assert f"output: {root}" in done.stdout and "tracking: sqlite:///" in done.stdout
    # Quiet by default: no MLflow INFO lines, no torch vmap note, no warnings with their source lines.
    assert " INFO " not in done.stderr and "performance drop" not in done.stderr and "Warning:" not in done.stderr
    uri = f"sqlite:///{root / 'mlflow.db'}"
    runs = read_runs(uri, "tiny")
    parents = [r for r in runs if "mlflow.parentRunId" not in r["tags"]]
    children = [r for r in runs if "mlflow.parentRunId" in r["tags"]]
    assert len(parents) == 1 and len(children) == 2
    assert all(c["tags"]["mlflow.parentRunId"] == parents[0]["run_id"] for c in children)
    assert {c["tags"]["size"] for c in children} == {"s", "m"}
    for child in children:
        assert child["status"] == "FINISHED"
        for tag in ("architecture", "parameters", "seed", "parameterization"):
            assert tag in child["tags"]
        assert child["params"]["train.lr"] == "0.003" and child["params"]["recipe.kind"] == "llama"
        expected_steps = measured_steps(read_table(root / "runs" / child["name"] / "metrics.csv"))
        assert expected_steps == [0, 1, 2, 3, 4, 10, 11]  # step 0 and windows of 2 from steps 1, 3 and 10
        for key in COMPONENTS + ["loss"]:
            history = metric_history(uri, child["run_id"], key)
            steps = sorted({s for s, _ in history})
            assert steps == (expected_steps if key != "loss" else list(range(12))), key
    parent_artifacts = list((root / "mlartifacts").rglob("*.png"))
    assert {p.name for p in parent_artifacts} >= {"loss_and_position.png", "components.png", "final_loss.png"}
    assert list((root / "mlartifacts").rglob("spec.yaml")) and list((root / "mlartifacts").rglob("metrics.csv"))


def test_dry_run_lists_the_runs_and_creates_nothing(tmp_path):
    done = cli("run", write_spec(tmp_path), "train.seeds=[0,1]", "--dry-run", "--output", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert "4 runs:" in done.stdout and "m-seed1" in done.stdout
    assert not (tmp_path / "out").exists()


def test_engine_from_python_returns_metrics_run_ids_and_paths(tmp_path):
    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", "model.sizes={s: {hidden: 8, ff: 16}}"])
    results = Engine(spec).run()
    assert [r.name for r in results] == ["s-seed0"] and results[0].status == "FINISHED"
    table = results[0].metrics
    assert list(table["step"][table["spectral_position"].notna()]) == [0, 1, 2, 3, 4, 10, 11]
    assert results[0].run_id and results[0].output_dir.is_dir()
    row = table[table["step"] == 2].iloc[0]
    # D = L · N · P and the actual loss change on B across the step are recorded.
    assert row["loss_magnitude"] * row["network_magnitude"] * row["spectral_position"] == pytest.approx(row["grad_dot"])
    assert row["delta_loss_b"] == pytest.approx(row["loss_b_after"] - row["loss_b"])
    assert row["delta_loss_b_sgd_linear"] == pytest.approx(-row["lr"] * row["grad_dot"])
    assert "eval_loss" in table and math.isfinite(table["eval_loss"].dropna().iloc[-1])


@pytest.mark.slow
def test_interrupt_and_resume_equal_an_uninterrupted_run(tmp_path):
    spec_path = write_spec(tmp_path, train={**TINY_SPEC["train"], "steps": 40, "checkpoint_every": 10},
                           model={**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}})
    reference = cli("run", spec_path, "--output", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "specreach.cli", "run", str(spec_path), "--output", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "tiny" / "runs" / "s-seed0" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(read_table(metrics)) > 5):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    status = json.loads((metrics.parent / "status.json").read_text())
    assert status["status"] == "KILLED" and 0 < status["step"] < 40
    runs = {r["name"]: r for r in read_runs(f"sqlite:///{out / 'tiny' / 'mlflow.db'}", "tiny")}
    assert runs["s-seed0"]["status"] == "KILLED"
    assert f"specreach run --resume {out / 'tiny'}" in stdout

    resumed = cli("run", "--resume", out / "tiny")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = read_table(tmp_path / "reference" / "tiny" / "runs" / "s-seed0" / "metrics.csv")
    got = read_table(metrics)
    assert len(got) == len(expected)
    for row_got, row_expected in zip(got, expected):
        for key, value in row_expected.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(row_got[key]), key
            else:
                assert row_got[key] == value, (row_expected["step"], key)
    runs = {r["name"]: r for r in read_runs(f"sqlite:///{out / 'tiny' / 'mlflow.db'}", "tiny")}
    assert runs["s-seed0"]["status"] == "FINISHED"


@pytest.mark.slow  # about 10 s: keeps the default suite under 5 minutes on 2 cores
def test_a_nan_run_fails_cleanly_while_its_siblings_finish(tmp_path):
    spec_path = write_spec(tmp_path, train={**TINY_SPEC["train"], "lr_per_size": {"s": 1.0e+30}})
    done = cli("run", spec_path, "--output", tmp_path / "out")
    assert done.returncode == 1
    root = tmp_path / "out" / "tiny"
    failed = json.loads((root / "runs" / "s-seed0" / "status.json").read_text())
    assert failed["status"] == "FAILED"
    assert "the training loss is" in failed["message"] and "last finite loss" in failed["message"]
    assert read_table(root / "runs" / "s-seed0" / "metrics.csv")  # what was recorded stays
    assert json.loads((root / "runs" / "m-seed0" / "status.json").read_text())["status"] == "FINISHED"
    runs = {r["name"]: r for r in read_runs(f"sqlite:///{root / 'mlflow.db'}", "tiny")}
    assert runs["s-seed0"]["status"] == "FAILED" and runs["m-seed0"]["status"] == "FINISHED"
    assert "last finite loss" in runs["s-seed0"]["tags"]["specreach.message"]


def test_unreachable_tracking_server_still_leaves_the_metrics_table(tmp_path):
    spec_path = write_spec(tmp_path, model={**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}})
    done = cli("run", spec_path, "--output", tmp_path / "out", "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MLflow tracking at http://127.0.0.1" in done.stderr and "unavailable" in done.stderr
    rows = read_table(tmp_path / "out" / "tiny" / "runs" / "s-seed0" / "metrics.csv")
    assert measured_steps(rows) == [0, 1, 2, 3, 4, 10, 11]


@pytest.fixture
def mlflow_server(tmp_path):
    server, url = start_mlflow_server(tmp_path, free_port())
    yield url
    stop_process_group(server)


@pytest.mark.slow
def test_runs_reach_a_real_mlflow_server(tmp_path, mlflow_server):
    spec_path = write_spec(tmp_path, model={**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}})
    done = cli("run", spec_path, "--output", tmp_path / "out", "--tracking-uri", mlflow_server)
    assert done.returncode == 0, done.stderr[-2000:]
    request = urllib.request.Request(
        mlflow_server + "/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny")
    experiment = json.load(urllib.request.urlopen(request))["experiment"]
    body = json.dumps({"experiment_ids": [experiment["experiment_id"]]}).encode()
    search = urllib.request.Request(mlflow_server + "/api/2.0/mlflow/runs/search", data=body,
                                    headers={"Content-Type": "application/json"})
    runs = json.load(urllib.request.urlopen(search))["runs"]
    assert len(runs) == 2
    child = next(r for r in runs if any(t["key"] == "mlflow.parentRunId" for t in r["data"]["tags"]))
    metrics = {m["key"] for m in child["data"]["metrics"]}
    assert set(COMPONENTS) | {"loss", "eval_loss"} <= metrics
    assert child["info"]["status"] == "FINISHED"


def test_monitor_in_a_users_own_training_loop(tmp_path):
    from specreach.data.text import PydocText
    from specreach.models.llama import Llama, LlamaConfig

    torch.manual_seed(0)
    data = PydocText(context=16, validation_size=16)
    model = Llama(LlamaConfig(vocab=256, layers=1, hidden=8, ff=16, heads=2, context=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    uri = f"sqlite:///{tmp_path / 'mine.db'}"
    monitor = LNPMonitor(model, token_cross_entropy, data.validation_pool(),
                         MonitorConfig(total_steps=10, schedule=[0, 4, 9], probes=2),
                         sink=[TableSink(tmp_path / "m.csv"), MlflowSink.start(uri, experiment="mine", run_name="loop")])
    for step, (x, y) in enumerate(data.train_batches(4, data_seed=0)):
        if step == 10:
            break
        optimizer.zero_grad()
        logits = model(x)
        loss = token_cross_entropy(logits, y)
        loss.backward()
        result = monitor.step(step, (x, y), loss, outputs=logits)
        assert (result is not None) == (step in (0, 4, 9))
        optimizer.step()
        monitor.after_update()
    monitor.close()
    (run,) = read_runs(uri, "mine")
    assert run["status"] == "FINISHED"
    assert sorted(s for s, _ in metric_history(uri, run["run_id"], "spectral_position")) == [0, 4, 9]
    assert measured_steps(read_table(tmp_path / "m.csv")) == [0, 4, 9]


def test_linear_probe_phase_probes_trained_and_random_backbones(tmp_path):
    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", "model.sizes={s: {hidden: 8, ff: 16}}",
                                            "probe={steps: 8}"])
    results = {r.name: r for r in Engine(spec).run()}
    assert list(results) == ["s-seed0", "s-seed0-probe-trained", "s-seed0-probe-random"]
    assert all(r.status == "FINISHED" for r in results.values())
    runs = {r["name"]: r for r in read_runs(f"sqlite:///{tmp_path / 'out' / 'tiny' / 'mlflow.db'}", "tiny")}
    head = 8 * 256 + 256  # the probe's θ: a new linear head from the 8-wide representation to 256 tokens
    for phase in ("trained", "random"):
        run = runs[f"s-seed0-probe-{phase}"]
        assert run["tags"]["phase"] == f"probe-{phase}"
        assert int(run["tags"]["trainable_parameters"]) == head
        table = results[f"s-seed0-probe-{phase}"].metrics
        assert len(table["loss"].dropna()) == 8
        assert set(c.split("/")[1] for c in table.columns if c.startswith("network_magnitude/")) == {"head"}
    # The trained probe's backbone is the trained run's final model; the random one, the same recipe at init.
    from specreach.engine.training import build_network
    from specreach.models.parameterization import build_model, load_model

    probe_runs = {r.name: r for r in Engine(spec).runs()}
    trained_backbone = build_network(probe_runs["s-seed0-probe-trained"], 256).backbone
    final, _ = load_model(results["s-seed0"].output_dir / "final.pt")
    random_backbone = build_network(probe_runs["s-seed0-probe-random"], 256).backbone
    initial = build_model(probe_runs["s-seed0"].recipe)
    for name, value in trained_backbone.state_dict().items():
        assert torch.equal(value, final.state_dict()[name]), name
        assert torch.equal(random_backbone.state_dict()[name], initial.state_dict()[name]), name
    assert not torch.equal(final.embedding.weight, initial.embedding.weight)


def test_a_run_spec_is_picklable_and_runs_in_another_process(tmp_path):
    import multiprocessing
    import pickle

    from specreach.engine import run_session

    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", "tracking={enabled: false}",
                                            "model.sizes={s: {hidden: 8, ff: 16}}"])
    (run,) = Engine(spec).runs()
    assert pickle.loads(pickle.dumps(run)) == run
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(run_session, (run,))
    assert result.status == "FINISHED" and result.output_dir == run.output_dir
    assert measured_steps(read_table(result.metrics_path)) == [0, 1, 2, 3, 4, 10, 11]


def test_threads_apply_to_the_run_only(tmp_path, monkeypatch):
    from specreach.engine import session

    seen = []
    monkeypatch.setattr(session.RunSession, "run", lambda self: seen.append(torch.get_num_threads()) or "done")
    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", "train.threads=1"])
    before = torch.get_num_threads()
    assert session.run_session(Engine(spec).runs()[0]) == "done"
    assert session.run_session(Engine(spec).runs()[0].model_copy(update={"train": spec.train.model_copy(
        update={"threads": None})}), threads=1) == "done"  # an executor's share of the cores
    assert seen == [1, 1] and torch.get_num_threads() == before


def test_sinks_record_rows_artifacts_and_status_and_mlflow_sends_only_when_flushed(tmp_path):
    from specreach.engine import Sinks
    from specreach.engine.run_folder import RunFolder, StatusSink

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    mlflow = MlflowSink.start(uri, experiment="sinks", run_name="one", artifact_root=tmp_path / "artifacts")
    folder = RunFolder(tmp_path / "run")
    sink = Sinks([TableSink(folder.metrics), mlflow, StatusSink(folder, mlflow.run_id)])
    sink.status("RUNNING", step=0)
    assert folder.read_status()["status"] == "RUNNING" and folder.result("one") is None
    sink.write({"step": 0, "loss": 2.0, "note": "text", "nan": float("nan")})
    sink.write({"step": 1, "loss": 1.5})
    assert metric_history(uri, mlflow.run_id, "loss") == []  # nothing leaves before a flush
    state = sink.state_dict()
    sink.flush()
    assert metric_history(uri, mlflow.run_id, "loss") == [(0, 2.0), (1, 1.5)]
    assert metric_history(uri, mlflow.run_id, "nan") == []
    sink.write({"step": 2, "loss": 1.0})
    sink.load_state_dict(state)  # back to the checkpoint: the row written after it is gone
    assert [row["step"] for row in read_table(folder.metrics)] == [0, 1]
    sink.artifact(folder.metrics)
    sink.status("FINISHED", final={"eval_loss": 1.0})
    (run,) = read_runs(uri, "sinks")
    assert run["status"] == "FINISHED" and list((tmp_path / "artifacts").rglob("metrics.csv"))
    assert folder.result("one").final == {"eval_loss": 1.0}
    crashed = folder.mark_crashed("one", "its worker died")
    assert crashed.crashed and folder.result("one") is None  # a crashed run is run again on resume


@pytest.mark.parametrize("mlflow_holds, checkpoint_rows", [(5, 3), (3, 5), (0, 0)])
def test_a_resumed_run_sends_each_row_to_mlflow_exactly_once(tmp_path, mlflow_holds, checkpoint_rows):
    """Whatever MLflow got before the process died — more rows than the checkpoint says were recorded,
    fewer, or none — the resumed run leaves it with every row once."""
    from specreach.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    rows = [{"step": step, "loss": 1.0 / (step + 1)} for step in range(8)]
    first = MlflowSink.start(uri, experiment="once", run_name="r")
    for row in rows[:mlflow_holds]:
        first.write(row)
    first.flush()  # ... and the process dies here
    resumed = MlflowSink(Tracker.start(uri, "once", "r", resume_run_id=first.run_id))
    resumed.catch_up(rows[:checkpoint_rows])  # the table, truncated to the checkpoint
    for row in rows[checkpoint_rows:]:  # recomputed after the checkpoint
        resumed.write(row)
    resumed.status("FINISHED")
    history = metric_history(uri, first.run_id, "loss")
    assert sorted(history) == [(row["step"], row["loss"]) for row in rows]
