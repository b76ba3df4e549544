"""Executors: run order by needs, a plugin's executor, and real worker processes and a real Ray
head on 127.0.0.1 running sweeps, surviving killed workers and Ctrl-C with the same numbers as
an uninterrupted run in this process."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import types
from pathlib import Path

import pytest

from engine_helpers import (
    TINY_SPEC, assert_same_tables, cli, free_port, start_cli, wait_until, write_spec,
)
from engine_helpers import table_rows as rows
from specreach.config import SpecError, load_spec
from specreach.engine.executors import Executor, Plan
from specreach.engine.runs import RunResult, TrackingTarget, expand
from specreach.plugins import get_plugin_manager, hookimpl
from specreach.tracking import metric_history, read_runs

# One thread per run everywhere: results are then bit-identical whichever process computes them.
SWEEP = {**TINY_SPEC, "train": {**TINY_SPEC["train"], "seeds": [0, 1], "threads": 1}}
LONG = {**TINY_SPEC, "model": {**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}},
        "train": {**TINY_SPEC["train"], "steps": 60, "checkpoint_every": 10, "threads": 1}}


def status_of(folder: Path) -> dict:
    try:
        return json.loads((folder / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The sweep and the long run in this machine's default way: local, one process."""
    out = tmp_path_factory.mktemp("reference")
    for spec in (SWEEP, LONG):
        name = f"{spec['train']['steps']}-steps"
        done = cli("run", write_spec(out, {**spec, "name": name}, name=f"{name}.yaml"), "--output", out)
        assert done.returncode == 0, done.stderr[-3000:]
    return {"sweep": out / "12-steps" / "runs", "long": out / "60-steps" / "runs"}


def assert_every_step_logged_once(root: Path, name: str, run: str, steps: int) -> None:
    """MLflow holds each step's loss exactly once: a resumed run never sends a value twice."""
    runs = {r["name"]: r for r in read_runs(f"sqlite:///{root / 'mlflow.db'}", name)}
    assert runs[run]["status"] == "FINISHED"
    history = metric_history(f"sqlite:///{root / 'mlflow.db'}", runs[run]["run_id"], "loss")
    assert sorted(step for step, _ in history) == list(range(steps))


# --- scheduling, in this process --------------------------------------------------------------------

def result(name, status="FINISHED"):
    return RunResult(name, status, None, Path(name))


def test_plan_starts_a_run_only_after_what_it_needs_and_refuses_it_when_that_failed(tmp_path):
    spec = load_spec(write_spec(tmp_path), ["probe={steps: 8}", "model.sizes={s: {hidden: 8, ff: 16}}"])
    runs = expand(spec, tmp_path, TrackingTarget.off())
    assert [(r.name, r.needs) for r in runs] == [("s-seed0", ()), ("s-seed0-probe-trained", ("s-seed0",)),
                                                 ("s-seed0-probe-random", ())]
    # Given in the worst order, the trained probe still waits for its backbone.
    plan = Plan([runs[1], runs[2], runs[0]])
    assert plan.next_ready().name == "s-seed0-probe-random"
    assert plan.next_ready().name == "s-seed0"
    assert plan.next_ready() is None  # the trained probe waits
    plan.record(result("s-seed0"))
    assert plan.next_ready().name == "s-seed0-probe-trained"

    failed = Plan(runs[1:], done={"s-seed0": result("s-seed0", "FAILED")})
    assert failed.next_ready().name == "s-seed0-probe-random"
    assert failed.next_ready() is None
    (refused,) = [r for r in failed.ordered_results()]
    assert refused.status == "FAILED" and refused.message == "not run: it needs s-seed0, which failed"
    with pytest.raises(ValueError, match="needs s-seed0, which is not a run of this spec"):
        Plan(runs[1:])


class RecordingExecutor(Executor):
    """A third party's executor: here, it records what it is given and runs nothing."""

    name = "recording"
    seen: list = []

    class Params(__import__("pydantic").BaseModel):
        model_config = {"extra": "forbid"}
        label: str

    def run(self, runs, stop, done=None):
        RecordingExecutor.seen.append((self.params.label, [r.name for r in runs], sorted(done or {})))
        return [RunResult(r.name, "FAILED", None, r.output_dir, f"recorded by {self.params.label}") for r in runs]


@pytest.fixture
def recording_plugin():
    plugin = types.ModuleType("recording_plugin")
    plugin.register_executors = hookimpl(lambda register: register(RecordingExecutor))
    manager = get_plugin_manager()
    manager.register(plugin, name="recording-plugin")
    RecordingExecutor.seen.clear()
    yield
    manager.unregister("recording-plugin")


def test_a_plugins_executor_is_chosen_by_the_spec_with_its_own_parameters(tmp_path, recording_plugin):
    from specreach import Engine

    path = write_spec(tmp_path)
    with pytest.raises(SpecError, match=r"override 'execution.params.labl=x': execution.params.labl: no key 'labl' in execution.params \(did you mean 'label'\?\)"):
        load_spec(path, ["execution.kind=recording", "execution.params.labl=x"])
    with pytest.raises(SpecError, match=r"execution.kind: unknown executor 'recordin' \(did you mean 'recording'\?\)"):
        load_spec(path, ["execution.kind=recordin"])
    spec = load_spec(path, ["execution.kind=recording", "execution.params.label=mine", f"output={tmp_path / 'out'}",
                            "tracking.enabled=false"])
    results = Engine(spec).run()
    assert RecordingExecutor.seen == [("mine", ["s-seed0", "m-seed0"], [])]
    assert [(r.name, r.message) for r in results] == [("s-seed0", "recorded by mine"), ("m-seed0", "recorded by mine")]


def test_a_run_an_executor_never_started_still_ends_with_a_status_and_why(tmp_path, recording_plugin):
    from specreach import Engine

    class Forgetful(RecordingExecutor):
        name = "forgetful"

        def run(self, runs, stop, done=None):  # runs the first run only, and forgets the rest
            return super().run(runs, stop, done)[:1]

    plugin = types.ModuleType("forgetful_plugin")
    plugin.register_executors = hookimpl(lambda register: register(Forgetful))
    get_plugin_manager().register(plugin, name="forgetful-plugin")
    try:
        spec = load_spec(write_spec(tmp_path), ["execution.kind=forgetful", "execution.params.label=x",
                                                f"output={tmp_path / 'out'}", "tracking.enabled=false"])
        results = Engine(spec).run()
    finally:
        get_plugin_manager().unregister("forgetful-plugin")
    assert [(r.name, r.status) for r in results] == [("s-seed0", "FAILED"), ("m-seed0", "FAILED")]
    assert results[1].message == "never started: the executor ended without running it; `specreach run --resume` " \
                                 "runs it"


def test_executor_overrides_on_the_command_line_are_validated(tmp_path):
    path = write_spec(tmp_path)
    spec = load_spec(path, ["execution.kind=processes", "execution.params.workers=2"])
    assert spec.execution.kind == "processes" and spec.execution.params == {"workers": 2}
    with pytest.raises(SpecError, match="execution.params.workers: Input should be greater than or equal to 1"):
        load_spec(path, ["execution.kind=processes", "execution.params.workers=0"])
    with pytest.raises(SpecError, match=r"execution.params.address: no key .address. in execution.params \(valid: max_retries, workers\)"):
        load_spec(path, ["execution.kind=processes", "execution.params.address=auto"])
    done = cli("run", path, "--executor", "processes", "--workers", "3", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "executor processes" in done.stdout and "workers: 3" in done.stdout
    with pytest.raises(SpecError, match="sweep.execution.kind: 'execution' cannot be swept"):
        load_spec(path, ["sweep={execution.kind: [local, processes]}"])


# --- worker processes ----------------------------------------------------------------------------

def test_a_script_without_a_main_guard_gets_told_how_to_fix_it(tmp_path):
    """spawn imports the main module again in every worker: unguarded, the workers exit as they start."""
    script = tmp_path / "sweep.py"
    script.write_text(
        "import threading\n"
        "from specreach.config import load_spec\n"
        "from specreach.engine import Engine\n"
        f"engine = Engine(load_spec({str(write_spec(tmp_path))!r}, ['execution.kind=processes', "
        f"'output={tmp_path / 'out'}', 'tracking.enabled=false']))\n"
        "engine.run()\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode != 0
    assert "worker processes exit as they start" in done.stderr and 'if __name__ == "__main__":' in done.stderr


def assert_one_ordered_view(stderr: str, names: list[str]) -> None:
    """What a person sees of a sweep run elsewhere: whole lines of the runs, in order, then the sweep's
    last line; no worker output glued onto another line, no colour codes, no log summaries."""
    assert "\x1b" not in stderr and "repeated" not in stderr and "pid=" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert all(line.startswith("[") for line in lines), lines
    assert all(line.count("] step ") + line.count("[sweep]") <= 1 for line in lines), lines
    assert lines[-1].startswith(f"[sweep] {len(names)}/{len(names)} runs done"), lines[-3:]
    for name in names:
        mine = [line for line in lines if line.startswith(f"[{name}] step ")]
        assert mine[0] == f"[{name}] step 1/12: measuring" and mine[-1].startswith(f"[{name}] step 12/12 loss ")


@pytest.mark.slow
def test_processes_run_a_sweep_with_the_numbers_of_a_local_run(tmp_path, references):
    spec_path = write_spec(tmp_path, {**SWEEP, "name": "12-steps"})
    done = cli("run", spec_path, "execution.kind=processes", "execution.params.workers=2", "--output", tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "12-steps"
    names = ["s-seed0", "m-seed0", "s-seed1", "m-seed1"]
    assert_one_ordered_view(done.stderr, names)
    for name in names:
        assert status_of(root / "runs" / name)["status"] == "FINISHED"
        assert_same_tables(root / "runs" / name / "metrics.csv", references["sweep"] / name / "metrics.csv")
    pids = {status_of(root / "runs" / name).get("pid") for name in names}
    assert len(pids) == 2 and os.getpid() not in pids  # two workers shared the four runs
    children = [r for r in read_runs(f"sqlite:///{root / 'mlflow.db'}", "12-steps") if "mlflow.parentRunId" in r["tags"]]
    assert sorted(c["name"] for c in children) == sorted(names) and {c["status"] for c in children} == {"FINISHED"}


@pytest.mark.slow
def test_processes_restart_a_killed_worker_and_the_run_ends_as_if_uninterrupted(tmp_path, references):
    spec_path = write_spec(tmp_path, {**LONG, "name": "60-steps"})
    process = start_cli("run", spec_path, "execution.kind=processes", "execution.params.max_retries=1",
                        "--output", tmp_path)
    folder = tmp_path / "60-steps" / "runs" / "s-seed0"
    wait_until(lambda: (folder / "checkpoint.pt").exists() and rows(folder) > 15, what="a checkpoint and more rows")
    worker = status_of(folder)["pid"]
    os.kill(worker, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    assert status_of(folder)["status"] == "FINISHED" and status_of(folder)["pid"] != worker
    assert_same_tables(folder / "metrics.csv", references["long"] / "s-seed0" / "metrics.csv")
    assert_every_step_logged_once(tmp_path / "60-steps", "60-steps", "s-seed0", 60)


@pytest.mark.slow
def test_a_crashed_worker_fails_only_its_run_and_resume_finishes_it(tmp_path, references):
    spec = {**LONG, "name": "60-steps", "model": {**LONG["model"], "sizes": {"s": {"hidden": 8, "ff": 16},
                                                                              "m": {"hidden": 16, "ff": 32}}}}
    spec_path = write_spec(tmp_path, spec)
    process = start_cli("run", spec_path, "execution.kind=processes", "execution.params.workers=2",
                        "execution.params.max_retries=0", "--output", tmp_path)
    root = tmp_path / "60-steps"
    folder = root / "runs" / "s-seed0"
    wait_until(lambda: (folder / "checkpoint.pt").exists() and rows(folder) > 15, what="a checkpoint and more rows")
    os.kill(status_of(folder)["pid"], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 1
    crashed = status_of(folder)
    assert crashed["status"] == "FAILED" and crashed["crashed"] is True
    assert "its worker process died (signal 9)" in crashed["message"] and "--resume" in crashed["message"]
    assert status_of(root / "runs" / "m-seed0")["status"] == "FINISHED"  # the other worker's run went on
    assert "s-seed0  FAILED" in stdout and "m-seed0  FINISHED" in stdout
    runs = {r["name"]: r for r in read_runs(f"sqlite:///{root / 'mlflow.db'}", "60-steps")}
    assert runs["s-seed0"]["status"] == "FAILED"

    resumed = cli("run", "--resume", root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert status_of(folder)["status"] == "FINISHED"
    assert_same_tables(folder / "metrics.csv", references["long"] / "s-seed0" / "metrics.csv")
    assert_every_step_logged_once(root, "60-steps", "s-seed0", 60)


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_at_a_step_boundary_and_resume_completes(tmp_path):
    spec = {**LONG, "name": "long", "train": {**LONG["train"], "steps": 400},
            "model": {**LONG["model"], "sizes": {"s": {"hidden": 8, "ff": 16}, "m": {"hidden": 16, "ff": 32}}}}
    spec_path = write_spec(tmp_path, spec)
    reference = cli("run", spec_path, "model.sizes={s: {hidden: 8, ff: 16}}", "--output", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    process = start_cli("run", spec_path, "--executor", "processes", "--workers", "2", "--output", tmp_path)
    root = tmp_path / "long"
    folders = [root / "runs" / "s-seed0", root / "runs" / "m-seed0"]
    wait_until(lambda: all(rows(f) > 5 for f in folders), what="both runs under way")
    process.send_signal(signal.SIGINT)  # to the parent only: it stops the workers
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 130, stderr[-3000:]
    for folder in folders:
        status = status_of(folder)
        assert status["status"] == "KILLED" and 0 < status["step"] < 400, status
    assert f"specreach run --resume {root}" in stdout

    resumed = cli("run", "--resume", root, "--executor", "processes")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_tables(folders[0] / "metrics.csv", tmp_path / "reference" / "long" / "runs" / "s-seed0" / "metrics.csv")
    for folder in folders:
        assert status_of(folder)["status"] == "FINISHED"
    assert_every_step_logged_once(root, "long", "s-seed0", 400)


@pytest.mark.slow
def test_a_worker_killed_while_idle_is_replaced_and_the_sweep_ends_honestly(tmp_path):
    """Killed between runs, a worker held no run; the run handed out next (one that needed another)
    used to meet a broken pipe that ended the sweep quietly with exit 0."""
    spec = {**LONG, "name": "idle", "measure": {**LONG["measure"], "schedule": [0, 5]},
            "train": {**LONG["train"], "checkpoint_every": None}, "probe": {"backbones": ["trained"], "steps": 8},
            "sweep": {"train.steps": [8, 600]}}
    process = start_cli("run", write_spec(tmp_path, spec), "--executor", "processes", "--workers", "2",
                        "--output", tmp_path)
    runs = tmp_path / "idle" / "runs"
    short_probe, long_run = runs / "steps=8-s-seed0-probe-trained", runs / "steps=600-s-seed0"
    wait_until(lambda: status_of(short_probe).get("status") == "FINISHED", what="the short run and its probe")
    assert status_of(long_run).get("status") == "RUNNING"  # the other worker is busy: this one is idle
    os.kill(status_of(short_probe)["pid"], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    names = ["steps=8-s-seed0", "steps=8-s-seed0-probe-trained", "steps=600-s-seed0",
             "steps=600-s-seed0-probe-trained"]
    for name in names:
        assert status_of(runs / name)["status"] == "FINISHED", name
        assert re.search(rf"^{re.escape(name)} +FINISHED", stdout, re.MULTILINE), stdout


@pytest.mark.slow
def test_ctrl_c_while_the_first_worker_starts_stops_the_sweep_without_a_false_cause(tmp_path):
    """The worker's own start was interrupted too, and the error blamed a missing main guard."""
    process = subprocess.Popen([sys.executable, "-m", "specreach.cli", "run", str(write_spec(tmp_path, LONG)),
                                "--executor", "processes", "--workers", "1", "--output", str(tmp_path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def worker_started() -> bool:
        for child in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"multiprocessing" in command and b"resource_tracker" not in command:
                return True
        return False

    wait_until(worker_started, timeout=300, what="the first worker process")
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole process group
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    assert "__main__" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert "s-seed0  KILLED" in stdout and f"specreach run --resume {tmp_path / 'tiny'}" in stdout


def test_resume_takes_execution_overrides_and_another_executor_drops_the_old_ones_params(tmp_path, capsys):
    from specreach.cli import main

    def run(*args):
        capsys.readouterr()
        code = main(["run", *map(str, args)])
        return code, capsys.readouterr()

    root = tmp_path / "out" / "tiny"
    root.mkdir(parents=True)
    write_spec(root, {**SWEEP, "execution": {"kind": "processes", "params": {"workers": 2}}})  # as a run wrote it
    code, output = run("--resume", root, "execution.params.workers=1", "--dry-run")
    assert code == 0 and "executor processes" in output.out and "workers: 1" in output.out, output.err
    code, output = run("--resume", root, "--executor", "local", "--dry-run")
    assert code == 0 and "executor local" in output.out, output.err
    code, output = run("--resume", root, "train.lr=1")
    assert code == 2 and "only execution.* may be overridden, not train.lr=1" in output.err


@pytest.mark.slow
def test_a_ray_address_nothing_listens_on_is_named_within_seconds(tmp_path):
    import time

    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = cli("run", write_spec(tmp_path, LONG), "--executor", "ray", f"execution.params.address={address}",
               "--output", tmp_path, timeout=300, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert time.monotonic() - started < 120
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"execution.params.address {address}: no Ray cluster answers there (Connection refused)" in done.stderr


# --- a Ray cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_head():
    """A real Ray head on 127.0.0.1 with 2 CPUs, started for these tests and stopped after them.

    Yields its address and the environment a driver needs: the cluster's authentication token
    (as on any cluster; passed in the environment, nothing is written to ~/.ray) and Ray's
    single-node mode, which keeps every socket on the loopback interface."""
    pytest.importorskip("ray")
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="srray-", dir="/tmp")  # short: Ray's sockets live under it
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
                   "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
         "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
         "--disable-usage-stats", "--temp-dir", temp_dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=environment)
    address = f"127.0.0.1:{port}"

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(up, timeout=120, what="the Ray head")
        yield types.SimpleNamespace(address=address, env=environment)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:  # anything the head left behind in its session
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_ray_runs_a_sweep_on_a_cluster_with_the_numbers_of_a_local_run(tmp_path, references, ray_head):
    spec_path = write_spec(tmp_path, {**SWEEP, "name": "12-steps"})
    done = cli("run", spec_path, "execution.kind=ray", f"execution.params.address={ray_head.address}", "--output",
               tmp_path, timeout=900, env=ray_head.env)
    assert done.returncode == 0, done.stderr[-3000:]
    root = tmp_path / "12-steps"
    names = ["s-seed0", "m-seed0", "s-seed1", "m-seed1"]
    assert_one_ordered_view(done.stderr, names)
    for name in names:
        assert status_of(root / "runs" / name)["status"] == "FINISHED"
        assert_same_tables(root / "runs" / name / "metrics.csv", references["sweep"] / name / "metrics.csv")
    assert os.getpid() not in {status_of(root / "runs" / name).get("pid") for name in names}
    children = [r for r in read_runs(f"sqlite:///{root / 'mlflow.db'}", "12-steps") if "mlflow.parentRunId" in r["tags"]]
    assert sorted(c["name"] for c in children) == sorted(names) and {c["status"] for c in children} == {"FINISHED"}


@pytest.mark.slow
def test_ray_retries_a_killed_task_which_resumes_from_its_checkpoint(tmp_path, references, ray_head):
    spec_path = write_spec(tmp_path, {**LONG, "name": "60-steps"})
    process = start_cli("run", spec_path, "execution.kind=ray", f"execution.params.address={ray_head.address}",
                        "execution.params.max_retries=1", "--output", tmp_path, env=ray_head.env)
    folder = tmp_path / "60-steps" / "runs" / "s-seed0"
    wait_until(lambda: (folder / "checkpoint.pt").exists() and rows(folder) > 15, what="a checkpoint and more rows")
    worker = status_of(folder)["pid"]
    os.kill(worker, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, stderr[-3000:]
    assert status_of(folder)["status"] == "FINISHED" and status_of(folder)["pid"] != worker
    assert_same_tables(folder / "metrics.csv", references["long"] / "s-seed0" / "metrics.csv")
    assert_every_step_logged_once(tmp_path / "60-steps", "60-steps", "s-seed0", 60)


@pytest.mark.slow
def test_ray_ctrl_c_stops_the_tasks_at_a_step_boundary_and_resume_completes(tmp_path, ray_head):
    spec_path = write_spec(tmp_path, {**LONG, "name": "long", "train": {**LONG["train"], "steps": 400}})
    reference = cli("run", spec_path, "--output", tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    process = start_cli("run", spec_path, "execution.kind=ray", f"execution.params.address={ray_head.address}",
                        "--output", tmp_path, env=ray_head.env)
    root = tmp_path / "long"
    folder = root / "runs" / "s-seed0"
    wait_until(lambda: rows(folder) > 5, what="the run under way")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 130, stderr[-3000:]
    status = status_of(folder)
    assert status["status"] == "KILLED" and 0 < status["step"] < 400, status
    assert not (folder / "stop").exists()

    resumed = cli("run", "--resume", root, timeout=900, env=ray_head.env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_tables(folder / "metrics.csv", tmp_path / "reference" / "long" / "runs" / "s-seed0" / "metrics.csv")
    assert_every_step_logged_once(root, "long", "s-seed0", 400)


@pytest.mark.slow
def test_ray_without_an_address_starts_a_local_instance_for_the_sweep(tmp_path, references):
    pytest.importorskip("ray")
    spec = {**SWEEP, "name": "12-steps", "train": {**SWEEP["train"], "seeds": [0]}}
    done = cli("run", write_spec(tmp_path, spec), "execution.kind=ray", "execution.params.local_cpus=1",
               "--output", tmp_path, timeout=900, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert_one_ordered_view(done.stderr, ["s-seed0", "m-seed0"])
    for name in ("s-seed0", "m-seed0"):
        folder = tmp_path / "12-steps" / "runs" / name
        assert status_of(folder)["status"] == "FINISHED"
        assert_same_tables(folder / "metrics.csv", references["sweep"] / name / "metrics.csv")


def test_ray_missing_is_a_clear_error(monkeypatch):
    from specreach.engine.executors import ray as ray_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ValueError, match=r"needs Ray: pip install 'specreach\[ray\]'"):
        ray_executor.RayExecutor().run([], threading.Event())


def test_resuming_with_another_executor_leaves_the_old_ones_parameters_behind(tmp_path):
    """A sweep started with `--executor processes --workers 2` resumes on Ray (scaling.md's example)."""
    import yaml

    from specreach.config import load_spec

    spec = load_spec(write_spec(tmp_path, SWEEP), ["execution.kind=processes", "execution.params.workers=2"])
    folder = tmp_path / "out" / spec.name
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    done = cli("run", "--resume", folder, "--executor", "ray", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "executor ray" in done.stdout and "workers" not in done.stdout.split("runs: executor")[0].split(
        "execution:")[1].split("output:")[0]
    kept = cli("run", "--resume", folder, "--workers", "3", "--dry-run")
    assert kept.returncode == 0 and "workers: 3" in kept.stdout
