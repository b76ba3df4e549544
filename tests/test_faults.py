"""Faults, for real: the CLI in a subprocess, real signals, real files, a real MLflow store or server.

No run here configures a checkpoint by hand: the defaults must bound what a fault loses, and a
resumed run must equal an uninterrupted one row for row, in its table and in MLflow.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine_helpers import (
    TINY_SPEC, assert_same_tables, cli, free_port, start_cli, start_mlflow_server, stop_process_group, table_rows,
    tensorboard_scalars, wait_until, write_spec,
)
from specreach.engine.metrics_table import read_table
from specreach.tracking import metric_history, read_runs

ONE_SIZE = {**TINY_SPEC, "model": {**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}},
            "train": {**TINY_SPEC["train"], "threads": 1}}
LONG = {**ONE_SIZE, "train": {**ONE_SIZE["train"], "steps": 200}}


def status_of(folder: Path) -> dict:
    try:
        return json.loads((folder / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def each_step_once(uri: str, run_id: str, key: str, steps: int) -> None:
    history = metric_history(uri, run_id, key)
    assert sorted(step for step, _ in history) == list(range(steps)), key


def no_traceback(text: str) -> None:
    assert "Traceback (most recent call last)" not in text, text[-3000:]


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory):
    """The uninterrupted run that interrupted ones must equal."""
    directory = tmp_path_factory.mktemp("reference")
    done = cli("run", write_spec(directory, LONG), "--output", directory / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    return directory / "out" / "tiny" / "runs" / "s-seed0" / "metrics.csv"


# --- security --------------------------------------------------------------------------------------

class Planted:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_checkpoint_pickle_is_not_executed(tmp_path):
    spec_path = write_spec(tmp_path, ONE_SIZE)
    folder = tmp_path / "out" / "tiny" / "runs" / "s-seed0"
    folder.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    (folder / "checkpoint.pt").write_bytes(pickle.dumps({"model": Planted(marker)}))
    for args in (["run", spec_path, "--output", tmp_path / "out"], ["run", "--resume", tmp_path / "out" / "tiny"]):
        if args[1] == "--resume":  # a resumable directory: a spec.yaml from an earlier run
            (tmp_path / "out" / "tiny" / "spec.yaml").write_text(spec_path.read_text())
        done = cli(*args)
        assert not marker.exists(), "the pickle in checkpoint.pt ran"
        assert done.returncode == 2, done.stderr[-2000:]
        assert f"{folder / 'checkpoint.pt'}: cannot be loaded as a checkpoint: it holds Python objects" in done.stderr
        no_traceback(done.stderr)


def test_names_that_would_escape_the_output_folder_are_refused(tmp_path):
    spec_path = write_spec(tmp_path, ONE_SIZE)
    for override, where in (("model.sizes={../../../../x: {hidden: 8, ff: 16}}", "size name '../../../../x'"),
                            ("name=..", "name '..'"), ("sweep.data.params.context=[../x]", "value '../x'")):
        done = cli("validate", spec_path, override)
        assert done.returncode == 1 and where in done.stderr, (override, done.stderr)
        assert f"override '{override}'" in done.stderr
    assert not (tmp_path.parent / "x").exists()


# --- never stale, never duplicated -----------------------------------------------------------------

@pytest.mark.slow
def test_a_changed_spec_into_the_same_output_is_refused_and_overwrite_reruns_it(tmp_path):
    spec_path = write_spec(tmp_path, ONE_SIZE)
    out = tmp_path / "out"
    assert cli("run", spec_path, "--output", out).returncode == 0
    folder = out / "tiny" / "runs" / "s-seed0"
    before = read_table(folder / "metrics.csv")

    changed = cli("run", spec_path, "--output", out, "train.lr=1e-3")
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert "holds 1 run of another spec under the same name" in changed.stderr
    assert "s-seed0: train.lr: 0.003 → 0.001" in changed.stderr and "--overwrite" in changed.stderr
    no_traceback(changed.stderr)
    assert read_table(folder / "metrics.csv") == before  # nothing was touched
    assert status_of(folder)["status"] == "FINISHED"

    same = cli("run", spec_path, "--output", out)  # the same spec again: done, skipped
    assert same.returncode == 0 and read_table(folder / "metrics.csv") == before

    rerun = cli("run", spec_path, "--output", out, "train.lr=1e-3", "--overwrite")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    description = json.loads((folder / "run.json").read_text())
    assert description["run_spec"]["train"]["lr"] == 1e-3
    assert read_table(folder / "metrics.csv")[1]["lr"] != before[1]["lr"]
    runs = read_runs(f"sqlite:///{out / 'tiny' / 'mlflow.db'}", "tiny")  # the old MLflow runs are deleted
    children = [r for r in runs if r["name"] == "s-seed0"]
    assert len(children) == 1 and children[0]["params"]["train.lr"] == "0.001"


@pytest.mark.slow
def test_a_second_process_on_the_same_output_is_refused_naming_the_holder(tmp_path):
    spec_path = write_spec(tmp_path, {**LONG, "train": {**LONG["train"], "steps": 20000}})  # stopped below
    out = tmp_path / "out"
    first = start_cli("run", spec_path, "--output", out)
    try:
        folder = out / "tiny" / "runs" / "s-seed0"
        wait_until(lambda: status_of(folder).get("status") == "RUNNING", what="the first run to start")
        second = cli("run", spec_path, "--output", out)
        assert second.returncode == 2
        assert f"output folder {out / 'tiny'} is in use by process {first.pid}" in second.stderr, second.stderr
        no_traceback(second.stderr)
        sync = cli("sync", out / "tiny")
        assert sync.returncode == 2 and f"in use by process {first.pid}" in sync.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 130 and status_of(folder)["status"] == "KILLED"


def test_damaged_run_files_get_clear_errors_naming_them(tmp_path, capsys):
    from specreach.cli import main

    def run():  # `specreach run` in this process (the imports are paid once)
        capsys.readouterr()
        code = main(["run", str(spec_path), "--output", str(out)])
        return code, capsys.readouterr().err

    spec_path = write_spec(tmp_path, ONE_SIZE)
    out = tmp_path / "out"
    assert run()[0] == 0
    folder = out / "tiny" / "runs" / "s-seed0"
    status = (folder / "status.json").read_text()
    for path, content, expected in (
            (folder / "status.json", status[:len(status) // 2], "is not valid JSON (truncated or damaged"),
            (folder / "status.json", "", "is empty"),
            (out / "tiny" / "engine.json", "{", "is not valid JSON")):
        original = path.read_text()
        path.write_text(content)
        code, stderr = run()
        assert code == 2 and f"{path}: {expected}" in stderr, stderr[-2000:]
        no_traceback(stderr)
        path.write_text(original)
    (folder / "status.json").unlink()
    (folder / "checkpoint.pt").write_bytes(b"")  # a run killed while writing a checkpoint, on a filesystem
    code, stderr = run()  # without atomic renames
    assert code == 2 and f"{folder / 'checkpoint.pt'}: cannot be loaded as a checkpoint" in stderr


# --- failures stay inside their run ----------------------------------------------------------------

EXPLODING_PLUGIN = """
from pydantic import ConfigDict

from specreach.lnp.hutchinson import Hutchinson, HutchinsonParams
from specreach.plugins import get_plugin_manager, hookimpl


class ExplodingParams(HutchinsonParams):
    model_config = ConfigDict(extra="forbid", frozen=True)
    explode: bool = False


class Exploding(Hutchinson):
    \"\"\"A third party's estimator that raises at run time when told to.\"\"\"

    name = "exploding"
    Params = ExplodingParams

    def chi_net(self, tape, outputs, problem):
        if self.params.explode:
            raise RuntimeError("the plugin estimator exploded")
        return super().chi_net(tape, outputs, problem)


class Plugin:
    @hookimpl
    def register_estimators(self, register):
        register(Exploding)


get_plugin_manager().register(Plugin(), name="exploding-plugin")
"""


@pytest.mark.slow  # about 10 s: keeps the default suite under 5 minutes on 2 cores
def test_a_sweep_member_failing_at_run_time_fails_only_itself(tmp_path):
    plugin_path = tmp_path / "plugin"
    plugin_path.mkdir()
    (plugin_path / "sitecustomize.py").write_text(EXPLODING_PLUGIN)  # loaded by every process of the run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_path),
                                                                       os.environ.get("PYTHONPATH")]))}
    spec = {**ONE_SIZE, "measure": {**ONE_SIZE["measure"], "estimator": "exploding"},
            "sweep": {"measure.options.explode": [False, True]}}
    done = cli("run", write_spec(tmp_path, spec), "--output", tmp_path / "out", env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    no_traceback(done.stderr)
    root = tmp_path / "out" / "tiny"
    good, bad = root / "runs" / "explode=false-s-seed0", root / "runs" / "explode=true-s-seed0"
    assert status_of(good)["status"] == "FINISHED"
    failed = status_of(bad)
    assert failed["status"] == "FAILED" and failed["message"].startswith("RuntimeError: the plugin estimator exploded")
    assert "Traceback (most recent call last)" in (bad / "traceback.txt").read_text()
    runs = {r["name"]: r for r in read_runs(f"sqlite:///{root / 'mlflow.db'}", "tiny")}
    assert runs[good.name]["status"] == "FINISHED"
    assert runs[bad.name]["status"] == "FAILED"
    assert runs[bad.name]["tags"]["specreach.message"].startswith("RuntimeError: the plugin estimator exploded")
    assert runs["tiny"]["status"] == "FINISHED"  # the parent fails only when every run failed
    assert "explode=true-s-seed0   FAILED    RuntimeError: the plugin estimator exploded" in done.stdout


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, long_reference):
    """In every sink: the table, MLflow and TensorBoard's event files hold each step once."""
    spec_path = write_spec(tmp_path, {**LONG, "tracking": {"sinks": ["mlflow", "tensorboard"]}})
    out = tmp_path / "out"
    folder = out / "tiny" / "runs" / "s-seed0"
    process = start_cli("run", spec_path, "--output", out)
    wait_until(lambda: (folder / "checkpoint.pt").exists() and table_rows(folder) > 40, what="a checkpoint")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    killed_at = table_rows(folder)
    assert status_of(folder)["status"] == "RUNNING" and 40 < killed_at < 200  # as the kill left it

    resumed = cli("run", "--resume", out / "tiny")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_tables(folder / "metrics.csv", long_reference)
    uri = f"sqlite:///{out / 'tiny' / 'mlflow.db'}"
    (run,) = [r for r in read_runs(uri, "tiny") if r["name"] == "s-seed0"]
    assert run["status"] == "FINISHED"
    each_step_once(uri, run["run_id"], "loss", 200)
    events = tensorboard_scalars(folder / "tensorboard")
    reference = read_table(long_reference)
    assert events["loss"] == [(row["step"], pytest.approx(row["loss"], rel=1e-6)) for row in reference
                              if row.get("loss") == row.get("loss")]  # each step once, in order
    assert [step for step, _ in events["spectral_position"]] == [row["step"] for row in reference
                                                                 if row.get("spectral_position") == row.get(
                                                                     "spectral_position")]
    assert not (folder / "checkpoint.pt").exists()  # keep_checkpoints: final
    assert (folder / "final.pt").exists()


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_leaves_a_consistent_status(tmp_path, long_reference):
    spec_path = write_spec(tmp_path, LONG)
    out = tmp_path / "out"
    folder = out / "tiny" / "runs" / "s-seed0"
    process = start_cli("run", spec_path, "--output", out)
    wait_until(lambda: table_rows(folder) > 30, what="rows")
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    no_traceback(stderr)
    status = status_of(folder)
    assert status["status"] == "KILLED"
    runs = {r["name"]: r for r in read_runs(f"sqlite:///{out / 'tiny' / 'mlflow.db'}", "tiny")}
    assert runs["s-seed0"]["status"] == "KILLED" and runs["tiny"]["status"] == "KILLED"
    resumed = cli("run", "--resume", out / "tiny")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_tables(folder / "metrics.csv", long_reference)
    each_step_once(f"sqlite:///{out / 'tiny' / 'mlflow.db'}", runs["s-seed0"]["run_id"], "loss", 200)


@pytest.mark.slow
def test_a_stop_during_a_long_measurement_is_honoured_between_probes(tmp_path):
    spec = {**ONE_SIZE, "measure": {**ONE_SIZE["measure"], "probes": 4096, "schedule": [0, 5]}}
    spec_path = write_spec(tmp_path, spec)
    out = tmp_path / "out"
    folder = out / "tiny" / "runs" / "s-seed0"
    process = start_cli("run", spec_path, "--output", out)
    wait_until(lambda: status_of(folder).get("status") == "RUNNING", what="the run to start")
    time.sleep(2)  # well inside step 0's 4096 probes
    stopped = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert time.monotonic() - stopped < 20
    assert process.returncode == 130
    status = status_of(folder)
    assert status["status"] == "KILLED" and status["step"] == 0 and table_rows(folder) == 0


@pytest.mark.slow
def test_a_tracking_server_killed_mid_run_then_sync_uploads_the_rest_once(tmp_path, long_reference):
    port = free_port()
    server, url = start_mlflow_server(tmp_path, port)
    spec_path = write_spec(tmp_path, LONG)
    out = tmp_path / "out"
    folder = out / "tiny" / "runs" / "s-seed0"
    try:
        process = start_cli("run", spec_path, "--output", out, "--tracking-uri", url)
        wait_until(lambda: (folder / "checkpoint.pt").exists() and table_rows(folder) > 40, what="rows sent")
        stop_process_group(server, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        assert "MLflow did not get all of this run" in stderr and f"specreach sync {out / 'tiny'}" in stderr
        no_traceback(stderr)
        assert_same_tables(folder / "metrics.csv", long_reference)  # the run itself lost nothing
        record = status_of(folder)["tracking"]
        assert record["complete"] is False and 0 < record["rows"] < 200

        server, url = start_mlflow_server(tmp_path, port)  # the server is back, same store
        for attempt in range(2):  # syncing twice sends nothing twice
            done = cli("sync", out / "tiny", "--tracking-uri", url)
            assert done.returncode == 0, done.stderr[-3000:]
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=url)
            run = client.get_run(status_of(folder)["run_id"])
            assert run.info.status == "FINISHED"
            loss = client.get_metric_history(run.info.run_id, "loss")
            assert sorted(m.step for m in loss) == list(range(200)), attempt
        assert "sent 0 of" in done.stdout
        assert status_of(folder)["tracking"]["complete"] is True
    finally:
        stop_process_group(server)


@pytest.mark.slow
def test_runs_of_two_specs_on_one_fresh_sqlite_store_lose_nothing(tmp_path):
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    spec = {**TINY_SPEC, "train": {**TINY_SPEC["train"], "seeds": [0, 1, 2], "steps": 6, "threads": 1},
            "measure": {**TINY_SPEC["measure"], "schedule": [0, 5]}}
    processes = [start_cli("run", write_spec(tmp_path, {**spec, "name": f"spec{i}"}, name=f"spec{i}.yaml"),
                           "--output", tmp_path / f"out{i}", "--tracking-uri", store) for i in range(2)]
    for process in processes:
        process.communicate(timeout=600)
        assert process.returncode == 0
    for i in range(2):
        runs = read_runs(store, f"spec{i}")
        assert len(runs) == 7 and all(r["status"] == "FINISHED" for r in runs)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.slow
def test_a_full_disk_fails_the_run_clearly_and_resume_finishes_it(tmp_path, long_reference):
    disk = tmp_path / "small-disk"
    if not _mount_tmpfs(disk, "2m"):
        pytest.skip("cannot mount a tmpfs here (needs root and mount permission)")
    try:
        spec_path = write_spec(tmp_path, LONG)
        out = disk / "out"
        folder = out / "tiny" / "runs" / "s-seed0"
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the store elsewhere: only the run files fill the disk
        filler = disk / "filler"
        process = start_cli("run", spec_path, "--output", out, "--tracking-uri", store)
        wait_until(lambda: (folder / "checkpoint.pt").exists(), what="a first checkpoint")
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(filler, "wb") as handle:  # leave less room than a second checkpoint needs
            handle.write(b"\0" * max(0, free - 8192))
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 1, stderr[-3000:]
        no_traceback(stderr)
        # The checkpoint or the table ran out of room: the run says so (status.json too, when there was
        # room left to write it).
        assert "s-seed0  FAILED" in stdout and ("is the disk full?" in stdout or "No space left" in stdout), stdout
        assert status_of(folder)["status"] in ("FAILED", "RUNNING")
        filler.unlink()
        resumed = cli("run", "--resume", out / "tiny")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert_same_tables(folder / "metrics.csv", long_reference)
        (run,) = [r for r in read_runs(store, "tiny") if r["name"] == "s-seed0"]
        each_step_once(store, run["run_id"], "loss", 200)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found |= {child} | descendants(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_ui_stops_its_whole_process_group_on_sigterm(tmp_path):
    spec_path = write_spec(tmp_path, {**ONE_SIZE, "train": {**ONE_SIZE["train"], "steps": 6},
                                      "measure": {**ONE_SIZE["measure"], "schedule": [0]}})
    assert cli("run", spec_path, "--output", tmp_path / "out").returncode == 0
    port = free_port()
    ui = start_cli("ui", tmp_path / "out" / "tiny", "--port", port)
    try:
        import urllib.request

        def answers():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    return True
            except OSError:
                return False

        wait_until(answers, timeout=180, what="the MLflow UI")
        wait_until(lambda: len(descendants(ui.pid)) > 1, timeout=60, what="the UI's workers")
        children = descendants(ui.pid)
        ui.send_signal(signal.SIGTERM)
        ui.communicate(timeout=60)
        wait_until(lambda: not any(alive(pid) for pid in children), timeout=30, what="the UI's processes to end")
    finally:
        if ui.poll() is None:
            ui.kill()


def test_a_run_killed_after_its_last_checkpoint_records_nothing_twice(tmp_path):
    """Killed between the final checkpoint and its FINISHED status: the rerun finds the end in the checkpoint."""
    from specreach import Engine, load_spec

    spec = load_spec(write_spec(tmp_path, ONE_SIZE), [f"output={tmp_path / 'out'}", "train.keep_checkpoints=last"])
    (first,) = Engine(spec).run()
    folder = first.output_dir
    (tmp_path / "before.csv").write_bytes((folder / "metrics.csv").read_bytes())
    status = status_of(folder)
    (folder / "status.json").write_text(json.dumps({**status, "status": "RUNNING"}))  # as a SIGKILL leaves it
    (again,) = Engine(spec).run()
    assert again.status == "FINISHED" and again.final == first.final
    assert_same_tables(folder / "metrics.csv", tmp_path / "before.csv")
    uri = f"sqlite:///{tmp_path / 'out' / 'tiny' / 'mlflow.db'}"
    each_step_once(uri, first.run_id, "loss", 12)
    assert [step for step, _ in metric_history(uri, first.run_id, "eval_loss")] == [12]


# --- the data at fault -------------------------------------------------------------------------------

FAULTY_DATA_PLUGIN = """
from typing import Literal

import torch

from specreach.data.powerlaw_teacher import PowerlawTeacher
from specreach.data.text import PydocText
from specreach.params.data import PowerlawTeacherParams, PydocTextParams
from specreach.plugins import get_plugin_manager, hookimpl


class FaultyTextParams(PydocTextParams):
    fault: Literal["none", "ignored-batch", "ignored-pool"] = "none"


class FaultyText(PydocText):
    \"\"\"A third party's text whose 4th training batch, or whole validation pool, has every target ignored.\"\"\"

    name = "faulty-text"
    Params = FaultyTextParams

    def validation_pool(self):
        inputs, targets = super().validation_pool()
        return inputs, torch.full_like(targets, -100) if self.params.fault == "ignored-pool" else targets

    def train_batches(self, batch_size, data_seed, start=0):
        for number, (inputs, targets) in enumerate(super().train_batches(batch_size, data_seed, start), start):
            ignored = self.params.fault == "ignored-batch" and number == 3
            yield inputs, torch.full_like(targets, -100) if ignored else targets


class FaultyTeacherParams(PowerlawTeacherParams):
    nan_at: int = 2


class FaultyTeacher(PowerlawTeacher):
    \"\"\"A third party's regression data with a NaN input in one training batch.\"\"\"

    name = "faulty-teacher"
    Params = FaultyTeacherParams

    def train_batches(self, batch_size, data_seed, start=0):
        for number, (inputs, targets) in enumerate(super().train_batches(batch_size, data_seed, start), start):
            if number == self.params.nan_at:
                inputs = inputs.clone()
                inputs[1, 3] = float("nan")
            yield inputs, targets


class Plugin:
    @hookimpl
    def register_datasets(self, register):
        register(FaultyText)
        register(FaultyTeacher)


get_plugin_manager().register(Plugin(), name="faulty-data-plugin")
"""


@pytest.mark.slow  # two runs of a few steps, about 30 s
def test_bad_data_is_blamed_on_the_data_and_its_batch_not_the_learning_rate(tmp_path):
    plugin_path = tmp_path / "plugin"
    plugin_path.mkdir()
    (plugin_path / "sitecustomize.py").write_text(FAULTY_DATA_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(plugin_path),
                                                                       os.environ.get("PYTHONPATH")]))}
    text = {**ONE_SIZE, "data": {"kind": "faulty-text", "params": {"context": 16, "validation_size": 16}},
            "sweep": {"data.params.fault": ["ignored-batch", "ignored-pool"]}}
    done = cli("run", write_spec(tmp_path, text), "--output", tmp_path / "out", env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    no_traceback(done.stderr)
    runs = tmp_path / "out" / "tiny" / "runs"
    ignored = status_of(runs / "fault=ignored-batch-s-seed0")
    assert ignored["status"] == "FAILED" and ignored["message"].startswith(
        "step 3: the training batch of data 'faulty-text' for this step (train.data_seed 0, batch size 4) makes the "
        "loss nan: it has no sample to learn from: every one of its 64 targets is the ignored value -100. The data is "
        "at fault, not the learning rate"), ignored["message"]
    pool = status_of(runs / "fault=ignored-pool-s-seed0")
    assert pool["status"] == "FAILED" and pool["message"].startswith(
        "the validation pool of data 'faulty-text' (16 samples) cannot be measured or evaluated on: it has no sample "
        "to learn from: every one of its 256 targets is the ignored value -100; the data is at fault"), pool["message"]
    assert "lr" not in pool["message"] and "learning rate" not in pool["message"]

    teacher = {**ONE_SIZE, "model": {"kind": "random-features", "params": {"inputs": 16, "features": 32}},
               "data": {"kind": "faulty-teacher", "params": {"inputs": 16, "features": 32, "train_size": 64,
                                                             "validation_size": 16}},
               "measure": {"estimator": "exact", "schedule": [0], "batch_size": 4}}
    done = cli("run", write_spec(tmp_path, teacher, name="teacher.yaml"), "--output", tmp_path / "out2", env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    message = status_of(tmp_path / "out2" / "tiny" / "runs" / "default-seed0")["message"]
    assert message.startswith("step 2: the training batch of data 'faulty-teacher' for this step (train.data_seed 0, "
                              "batch size 4) makes the loss nan: 1 of its 64 input values are NaN or Inf. The data is "
                              "at fault, not the learning rate"), message
