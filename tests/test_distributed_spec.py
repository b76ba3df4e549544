"""``train.distributed``: what a spec may ask of a data-parallel run, and what it gets (fast; the runs
themselves are in test_distributed.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine_helpers import TINY_SPEC
from specreach.engine.runs import TrackingTarget, computed, expand, fingerprint
from specreach.spec import Spec


def spec_with(train: dict | None = None, measure: dict | None = None) -> Spec:
    return Spec.model_validate({**TINY_SPEC, "model": {**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}},
                                "train": {**TINY_SPEC["train"], **(train or {})},
                                "measure": {**TINY_SPEC["measure"], **(measure or {})}})


def one_run(spec: Spec, tmp_path):
    (run,) = expand(spec, tmp_path, TrackingTarget.off())
    return run


def test_one_process_keeps_the_fingerprint_of_runs_recorded_before_the_option(tmp_path):
    plain = one_run(spec_with(), tmp_path)
    explicit = one_run(spec_with({"distributed": {"processes": 1}}), tmp_path)
    two = one_run(spec_with({"distributed": {"processes": 2}}), tmp_path)
    assert "distributed" not in computed(plain)["train"]
    assert fingerprint(plain) == fingerprint(explicit)
    # Hutchinson's probes are drawn per rank: another process count is another experiment
    assert fingerprint(two) != fingerprint(plain)


@pytest.mark.parametrize("train, measure, expected", [
    ({"batch_size": 6, "distributed": {"processes": 4}}, {"batch_size": 4},
     "train.batch_size: 6 does not divide evenly among the 4 processes"),
    ({"distributed": {"processes": 2}}, {"batch_size": 3},
     "measure.batch_size: 3 does not divide evenly among the 2 processes"),
    ({"device": "cuda:1", "distributed": {"processes": 2}}, {},
     "each process takes one device of its own (GPU i for local rank i); give cuda, cpu or auto"),
    ({"distributed": {"processes": 0}}, {}, "greater than or equal to 1"),
    ({"distributed": {"nodes": 2}}, {}, "Extra inputs are not permitted"),
])
def test_what_cannot_be_trained_data_parallel_is_refused_saying_what_to_give(train, measure, expected):
    with pytest.raises(ValidationError, match="distributed|batch_size|device") as error:
        spec_with(train, measure)
    assert expected in str(error.value)


def test_a_cuda_run_needs_a_gpu_for_each_process(tmp_path, monkeypatch):
    import torch

    from specreach.engine.distributed_run import backend_for, check_devices

    run = one_run(spec_with({"device": "cuda", "distributed": {"processes": 2}}), tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="processes is 2 with train.device cuda, but this machine shows 1 GPU") as error:
        check_devices(run)
    assert "train.device: cpu (gloo)" in str(error.value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_devices(run).type == "cuda"
    # the backend is the only difference between the CPU and the GPU paths
    assert backend_for(torch.device("cuda")) == "nccl" and backend_for(torch.device("cpu")) == "gloo"


def test_a_cuda_run_without_its_gpus_fails_clearly_in_its_folder(tmp_path, monkeypatch):
    import json

    import torch

    from specreach.engine.session import run_session

    run = one_run(spec_with({"device": "cuda", "distributed": {"processes": 4}}), tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    result = run_session(run, progress_bar=False)
    assert result.status == "FAILED" and "shows 2 GPU(s)" in result.message
    status = json.loads((run.output_dir / "status.json").read_text())
    assert status["status"] == "FAILED" and status["fingerprint"] == fingerprint(run)


def test_ray_reserves_a_gpu_for_each_rank_of_a_run_on_gpus(tmp_path):
    from specreach.engine.executors.ray import RayExecutor, RayParams, task_resources

    gpu_run = one_run(spec_with({"device": "cuda", "distributed": {"processes": 2}}), tmp_path)
    assert task_resources(gpu_run, RayParams(gpus_per_run=2, cpus_per_run=4)) == {"num_cpus": 4, "num_gpus": 2}
    cpu_run = one_run(spec_with({"distributed": {"processes": 2}}), tmp_path)
    assert task_resources(cpu_run, RayParams()) == {"num_cpus": 1, "num_gpus": 0}
    with pytest.raises(ValueError, match="execution.params.gpus_per_run is 1: set gpus_per_run: 2"):
        task_resources(gpu_run, RayParams(gpus_per_run=1))
    import threading

    # refused before Ray is imported or started
    with pytest.raises(ValueError, match="set gpus_per_run: 2"):
        RayExecutor(gpus_per_run=1).run([gpu_run], threading.Event())
