"""Data-parallel measurement, for real: 2 processes through ``torchrun`` (gloo, 127.0.0.1, a free port,
a timeout), each measuring its shards with a DistributedDataParallel model; every rank must report what
one process measures on the concatenated batches (``lnp-math.md`` §9)."""

import csv
import os
import signal
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine_helpers import free_port

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parent / "distributed"


def torchrun(script: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), str(SCRIPTS / script), *map(str, args)],
        capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "results.json"
    torchrun("measure_shards.py", out)
    return json.loads(out.read_text()), out


def single_process():
    """The script's model and global batches, in one process."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import measure_shards
    finally:
        sys.path.remove(str(SCRIPTS))
    torch.manual_seed(0)
    classifier = measure_shards.mlp()
    x_a, y_a = torch.randn(4, 4), torch.randint(0, 3, (4,))
    x_b, y_b = torch.randn(6, 4), torch.randint(0, 3, (6,))
    lm = measure_shards.TinyLM()
    tokens = torch.randint(0, 11, (4, 6))
    targets = tokens.roll(-1, 1)
    targets[2:, :] = -100
    targets[0, 4:] = -100
    lm_b = torch.randint(0, 11, (4, 6))
    return measure_shards, classifier, (x_a, y_a), (x_b, y_b), lm, (tokens, targets), (lm_b, lm_b.roll(-1, 1))


def assert_same(measured: dict, expected, names=("grad_dot", "loss_magnitude", "network_magnitude",
                                                 "spectral_position", "loss_magnitude_normalized",
                                                 "network_magnitude_normalized", "chi_net_a", "chi_net_b",
                                                 "chi_loss_a", "chi_loss_b", "loss_a", "loss_b", "units_a", "units_b")):
    for name in names:
        assert measured[name] == pytest.approx(float(getattr(expected, name)), rel=1e-9, abs=1e-14), name


def test_every_rank_reports_the_global_batches(float64, shards):
    from specreach import measure_lnp

    results, _ = shards
    script, classifier, batch_a, batch_b, lm, lm_a, lm_b = single_process()
    exact = measure_lnp(classifier, F.cross_entropy, batch_a, batch_b, estimator="exact")
    for rank in results:  # even shards, uneven shards, the explicit kernel, the step's DDP-averaged gradient
        for case in ("exact-even", "entk-even", "exact-uneven", "exact-step"):
            assert_same(rank[case], exact)
        assert rank["exact-step"]["reused"]
        assert_same(rank["exact-full-batch"], measure_lnp(classifier, F.cross_entropy, batch_a, estimator="exact"))
        # rank 1's shard of A is padding alone: it contributes no units, no g, no N
        assert_same(rank["lm-padding-shard"], measure_lnp(lm, script.token_loss, lm_a, lm_b, estimator="exact"))
    assert results[0] == results[1] or all(results[0][k] == results[1][k] for k in results[0] if k != "refusal")


def test_hutchinson_across_ranks_is_unbiased_with_the_global_standard_error(float64, shards):
    """20 independent measurements with K = 4 (probes independent across ranks): each rank reports the
    same numbers, ±2 SE covers χ_net most of the time, and the mean of the estimates is the exact χ_net."""
    from specreach import measure_lnp

    results, _ = shards
    _, classifier, batch_a, batch_b, *_ = single_process()
    exact = measure_lnp(classifier, F.cross_entropy, batch_a, batch_b, estimator="exact")
    assert results[0]["hutchinson-probes"] == results[1]["hutchinson-probes"]
    for which in ("a", "b"):
        truth = getattr(exact, f"chi_net_{which}")
        values = [m[f"chi_net_{which}"] for m in results[0]["hutchinson-probes"]]
        errors = [m[f"chi_net_{which}_stderr"] for m in results[0]["hutchinson-probes"]]
        covered = sum(abs(v - truth) <= 2 * e for v, e in zip(values, errors)) / len(values)
        assert covered >= 0.8, (which, covered)
        mean, spread = sum(values) / len(values), math.sqrt(sum(e**2 for e in errors)) / len(values)
        assert abs(mean - truth) < 4 * spread, (which, mean, truth, spread)
        assert len(set(values)) == len(values)  # independent draws


def test_a_refusal_on_one_rank_reaches_every_rank_as_the_same_error(shards):
    results, _ = shards
    kinds = {tuple(rank["refusal"][:1]) for rank in results}
    assert kinds == {("ValueError",)}
    assert all("the loss never reads the outputs at position 5" in rank["refusal"][1] for rank in results)
    assert "(on rank 1 of 2)" in results[0]["refusal"][1]


def test_the_monitor_writes_on_rank_zero_the_rows_one_process_writes(float64, shards, tmp_path):
    from specreach.engine.monitor import LNPMonitor, MonitorConfig
    from specreach.engine.sinks import TableSink

    _, out = shards
    assert not Path(f"{out}.rank1.csv").exists()
    with open(f"{out}.rank0.csv") as handle:
        rows = list(csv.DictReader(handle))
    _, classifier, (x_a, y_a), (x_b, y_b), *_ = single_process()
    expected_path = tmp_path / "one.csv"
    monitor = LNPMonitor(classifier, F.cross_entropy, (x_b, y_b), MonitorConfig(
        total_steps=2, estimator="exact", schedule=[0, 1], batch_size=6), sink=TableSink(expected_path))
    optimizer = torch.optim.SGD(classifier.parameters(), lr=0.1)
    for step in range(2):
        optimizer.zero_grad()
        logits = classifier(x_a)
        loss = F.cross_entropy(logits, y_a)
        loss.backward()
        monitor.step(step, (x_a, y_a), loss, outputs=logits, lr=0.1)
        optimizer.step()
        monitor.after_update()
    monitor.close()
    with open(expected_path) as handle:
        expected = list(csv.DictReader(handle))
    assert len(rows) == len(expected) == 2
    for row, one in zip(rows, expected):
        assert set(row) == set(one)
        for key, value in one.items():
            if value in ("", "nan"):
                assert row[key] == value, key
            else:
                assert float(row[key]) == pytest.approx(float(value), rel=1e-9, abs=1e-14), key


def compare_rows(rows: list[dict], kept: list[dict], build, loss_fn, names=("grad_dot", "loss_magnitude",
                 "network_magnitude", "spectral_position", "chi_net_a", "chi_net_b", "loss_a", "loss_b")):
    """Each measured row equals one process's measurement of the kept weights and global batches."""
    from specreach import measure_lnp

    measured = {int(row["step"]): row for row in rows if row.get("grad_dot") not in (None, "")}
    assert sorted(measured) == [entry["step"] for entry in kept]
    for entry in kept:
        model = build()
        model.load_state_dict(entry["weights"])
        expected = measure_lnp(model, loss_fn, entry["a"], entry["b"], estimator="exact")
        row = measured[entry["step"]]
        for name in names:
            assert float(row[name]) == pytest.approx(getattr(expected, name), rel=1e-9), (entry["step"], name)


def test_lightning_ddp_logs_the_global_batches_measurement(float64, tmp_path):
    """``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` with ``LNPCallback``: Lightning starts the
    second process itself; rank 0's rows equal one process on the gathered batches and kept weights."""
    import os

    out = tmp_path / "lightning"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    done = subprocess.run([sys.executable, str(SCRIPTS / "lightning_ddp.py"), str(out)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sys.path.insert(0, str(SCRIPTS))
    try:
        import lightning_ddp
    finally:
        sys.path.remove(str(SCRIPTS))
    with open(f"{out}.csv") as handle:
        rows = list(csv.DictReader(handle))
    kept = torch.load(f"{out}.kept.pt", weights_only=True)
    assert len(kept) == 2 and kept[0]["a"][0].shape[0] == 4  # 2 samples from each rank
    compare_rows(rows, kept, lightning_ddp.Classifier, F.cross_entropy)


def test_hugging_face_trainer_under_torchrun_logs_the_global_batches_measurement(float64, tmp_path):
    """``Trainer`` under ``torchrun --nproc_per_node 2`` (CPU) with ``LNPTrainerCallback``: rank 0's rows
    equal one process on the gathered batches and kept weights (the Trainer's clipped gradient is recomputed)."""
    from specreach.integrations.transformers import CausalLMLogits, next_token_loss

    out = tmp_path / "hf"
    torchrun("hf_trainer_ddp.py", out)
    sys.path.insert(0, str(SCRIPTS))
    try:
        import hf_trainer_ddp
    finally:
        sys.path.remove(str(SCRIPTS))
    with open(f"{out}.csv") as handle:
        rows = list(csv.DictReader(handle))
    kept = torch.load(f"{out}.kept.pt", weights_only=True)
    assert len(kept) == 2 and kept[0]["a"][1].shape[0] == 4  # 2 sequences from each rank

    class Logits(CausalLMLogits):
        def load_state_dict(self, state, strict=True):
            return self.model.load_state_dict(state, strict=strict)

    compare_rows(rows, kept, lambda: Logits(hf_trainer_ddp.tiny_gpt2()), next_token_loss)


def test_a_fully_sharded_model_is_refused_on_every_rank_with_what_to_use(tmp_path):
    out = tmp_path / "fsdp.json"
    torchrun("fsdp_refused.py", out)
    messages = json.loads(out.read_text())
    assert len(messages) == 2
    for message in messages:
        assert "sharded across ranks (FSDP" in message and "Measure a DistributedDataParallel model" in message


# --- the engine: one run of a spec, trained data-parallel (train.distributed) ------------------------------

def engine_spec(steps: int = 12, processes: int = 1) -> dict:
    """The tiny spec, one size, the exact estimator (Hutchinson's probes are drawn per rank, so only the exact
    components can equal one process's to float precision)."""
    from engine_helpers import TINY_SPEC

    measure = {key: value for key, value in TINY_SPEC["measure"].items() if key != "probes"}
    train = {**TINY_SPEC["train"], "threads": 1, "steps": steps}
    if processes > 1:
        train["distributed"] = {"processes": processes}
    return {**TINY_SPEC, "model": {**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}},
            "train": train, "measure": {**measure, "estimator": "exact"}, "tracking": {"sinks": ["mlflow"]}}


def assert_close_tables(got_path: Path, expected_path: Path, rel: float = 1e-5) -> None:
    """Row for row, the same columns and values to ``rel`` (float32 arithmetic summed in another order);
    a change of the loss on B, a difference of two close losses, to ``rel`` of the loss itself."""
    from specreach.engine.metrics_table import read_table

    got, expected = read_table(got_path), read_table(expected_path)
    assert [row["step"] for row in got] == [row["step"] for row in expected]
    for row_got, row_expected in zip(got, expected):
        assert set(row_got) == set(row_expected), row_expected["step"]
        for key, value in row_expected.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(row_got[key]), key
            elif key == "delta_loss_b":
                assert row_got[key] == pytest.approx(value, abs=rel * abs(row_expected["loss_b"])), key
            elif isinstance(value, (int, float)):
                assert row_got[key] == pytest.approx(value, rel=rel, abs=1e-12), (row_expected["step"], key)
            else:
                assert row_got[key] == value, key


def run_cli(spec: dict, directory: Path) -> Path:
    from engine_helpers import cli, write_spec

    directory.mkdir(parents=True, exist_ok=True)
    out = directory / "out"
    done = cli("run", write_spec(directory, spec), "--output", out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "tiny" / "runs" / "s-seed0"


@pytest.fixture(scope="module")
def one_process_long(tmp_path_factory):
    return run_cli(engine_spec(60), tmp_path_factory.mktemp("one-long"))


def test_the_engine_trains_one_run_over_two_processes_as_one_process_does(tmp_path):
    """``train.distributed.processes: 2``: the same data order and global batches, so the same metrics table
    (loss, every LNP component, the loss on B before and after the update, evaluations) as one process."""
    from specreach.tracking import read_runs

    one = run_cli(engine_spec(12), tmp_path / "one")
    two = run_cli(engine_spec(12, processes=2), tmp_path / "two")
    assert_close_tables(two / "metrics.csv", one / "metrics.csv")
    assert json.loads((two / "status.json").read_text())["status"] == "FINISHED"
    assert (two / "final.pt").exists() and not (two / "checkpoint.pt").exists()
    assert sorted(path.name for path in two.parent.iterdir()) == ["s-seed0"]  # no rank wrote a folder of its own
    (run,) = [r for r in read_runs(f"sqlite:///{two.parent.parent / 'mlflow.db'}", "tiny") if r["name"] == "s-seed0"]
    assert run["status"] == "FINISHED"
    from specreach.tracking import metric_history

    assert sorted(step for step, _ in metric_history(f"sqlite:///{two.parent.parent / 'mlflow.db'}", run["run_id"],
                                                     "loss")) == list(range(12))  # once each: rank 0 alone logs


def rank_processes(pid: int) -> list[int]:
    """The ranks the engine's elastic launcher started below ``pid`` (spawned interpreters), in start order."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"spawn_main" in command:
                found.append(child)
    return sorted(found)


def test_a_stopped_data_parallel_run_resumes_and_ends_as_one_process(tmp_path, one_process_long):
    """SIGINT to the engine: both ranks stop at the same step boundary, rank 0 checkpoints, the run is KILLED;
    --resume finishes it, each step recorded once, the table as one uninterrupted process's."""
    from engine_helpers import start_cli, table_rows, wait_until, write_spec
    from specreach.tracking import metric_history, read_runs

    out = tmp_path / "out"
    folder = out / "tiny" / "runs" / "s-seed0"
    process = start_cli("run", write_spec(tmp_path, engine_spec(60, processes=2)), "--output", out)
    wait_until(lambda: table_rows(folder) > 15, what="rows")
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 130, stderr[-3000:]
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "KILLED" and 15 < status["step"] < 60, status
    assert (folder / "checkpoint.pt").exists() and not (folder / "stop").exists()

    from engine_helpers import cli

    resumed = cli("run", "--resume", out / "tiny")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert_close_tables(folder / "metrics.csv", one_process_long / "metrics.csv")
    uri = f"sqlite:///{out / 'tiny' / 'mlflow.db'}"
    (run,) = [r for r in read_runs(uri, "tiny") if r["name"] == "s-seed0"]
    assert run["status"] == "FINISHED"
    assert sorted(step for step, _ in metric_history(uri, run["run_id"], "loss")) == list(range(60))


def test_a_killed_rank_brings_the_run_back_from_its_last_checkpoint(tmp_path, one_process_long):
    """SIGKILL to one rank mid-run: the launcher starts the ranks again from the last checkpoint, and the run
    finishes with every step recorded once, as one uninterrupted process."""
    from engine_helpers import start_cli, table_rows, wait_until, write_spec
    from specreach.tracking import metric_history, read_runs

    out = tmp_path / "out"
    folder = out / "tiny" / "runs" / "s-seed0"
    process = start_cli("run", write_spec(tmp_path, engine_spec(60, processes=2)), "--output", out)
    wait_until(lambda: (folder / "checkpoint.pt").exists() and table_rows(folder) > 15, what="a checkpoint")
    ranks = rank_processes(process.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    assert process.poll() is None  # the engine outlives its rank
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert json.loads((folder / "status.json").read_text())["status"] == "FINISHED"
    assert_close_tables(folder / "metrics.csv", one_process_long / "metrics.csv")
    uri = f"sqlite:///{out / 'tiny' / 'mlflow.db'}"
    (run,) = [r for r in read_runs(uri, "tiny") if r["name"] == "s-seed0"]
    assert run["status"] == "FINISHED"
    assert sorted(step for step, _ in metric_history(uri, run["run_id"], "loss")) == list(range(60))


def test_a_data_parallel_run_as_a_ray_task_records_what_one_process_does(tmp_path):
    """A local Ray instance gives the run's task its CPUs (shared by both ranks); the task launches the ranks
    as the engine does anywhere, and the table is one process's."""
    pytest.importorskip("ray")
    from engine_helpers import cli, write_spec

    one = run_cli(engine_spec(12), tmp_path / "one")
    directory = tmp_path / "ray"
    directory.mkdir()
    done = cli("run", write_spec(directory, engine_spec(12, processes=2)), "execution.kind=ray",
               "execution.params.local_cpus=2", "execution.params.cpus_per_run=2", "--output", directory / "out",
               timeout=900, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folder = directory / "out" / "tiny" / "runs" / "s-seed0"
    assert json.loads((folder / "status.json").read_text())["status"] == "FINISHED"
    assert_close_tables(folder / "metrics.csv", one / "metrics.csv")
