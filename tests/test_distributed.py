"""Data-parallel measurement, for real: 2 processes through ``torchrun`` (gloo, 127.0.0.1, a free port,
a timeout), each measuring its shards with a DistributedDataParallel model; every rank must report what
one process measures on the concatenated batches (``lnp-math.md`` §9)."""

import csv
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
