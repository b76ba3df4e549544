"""Devices and precision: bf16-mixed training on CPU autocast, measured in float32; CUDA where there is one."""

import pytest
import torch

from engine_helpers import write_spec
from specreach import Engine, load_spec, measure_lnp
from specreach.engine.training import batches, build_data, build_network, resolve_device
from specreach.engine.tasks import loss_for, output_size

REGRESSION = {
    "name": "rf",
    "model": {"kind": "random-features", "params": {"inputs": 16, "features": 64}},
    "data": {"kind": "powerlaw-teacher", "params": {"inputs": 16, "features": 64, "train_size": 256,
                                                    "validation_size": 64}},
    "train": {"lr": 1.0e-2, "batch_size": 32, "steps": 6, "seeds": [0], "threads": 1},
    "measure": {"estimator": "exact", "cross_batch": False, "schedule": [0, 3, 5]},
    "tracking": {"enabled": False},
}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def run_with(tmp_path, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = load_spec(write_spec(tmp_path, REGRESSION), [f"output={tmp_path / 'out'}", *overrides])
    (result,) = Engine(spec).run()
    assert result.status == "FINISHED", result.message
    return Engine(spec).runs()[0], result.metrics


def test_bf16_mixed_trains_in_bfloat16_and_measures_in_float32(tmp_path):
    run, table = run_with(tmp_path, "train.precision=bf16-mixed")
    _, fp32_table = run_with(tmp_path / "fp32")
    measured = table[table["spectral_position"].notna()]
    assert list(measured["step"]) == [0, 3, 5]
    # Training did run in bfloat16: the losses part from the fp32 run's (the zero-initialized readout
    # gives both the same loss at step 0).
    assert (table["loss"].iloc[1:] != fp32_table["loss"].iloc[1:]).all()

    # Step 0 measures the initial weights on the first training batch: measure them here in fp32.
    data = build_data(run)
    model = build_network(run, output_size(data.info()))
    batch = next(batches(data, run, 0))
    loss_fn = loss_for(data.info())
    reference = measure_lnp(model, loss_fn, batch, estimator="exact")
    row = measured.iloc[0]
    for key in ("grad_dot", "loss_magnitude", "network_magnitude", "spectral_position"):
        assert row[key] == pytest.approx(getattr(reference, key), rel=1e-5, abs=0), key

    # Reusing the bf16 step's gradient would have been wrong by far more than that tolerance.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(model(batch[0]), batch[1])
    gradient = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
    bf16_grad_dot = sum(float((g.float() ** 2).sum()) for g in gradient)
    assert abs(bf16_grad_dot / reference.grad_dot - 1) > 1e-4


def test_mixed_precision_needs_float32_weights(tmp_path):
    from specreach.config import SpecError

    with pytest.raises(SpecError, match="train: precision bf16-mixed autocasts a float32 model; dtype float64"):
        load_spec(write_spec(tmp_path, REGRESSION), ["train.precision=bf16-mixed", "train.dtype=float64"])
    with pytest.raises(SpecError, match="train.device: device .gpu. is not one of auto, cpu, cuda"):
        load_spec(write_spec(tmp_path, REGRESSION), ["train.device=gpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_on_a_machine_without_one_fails_the_run_clearly_and_auto_uses_the_cpu(tmp_path):
    assert resolve_device("auto") == torch.device("cpu")
    spec = load_spec(write_spec(tmp_path, REGRESSION), [f"output={tmp_path / 'out'}", "train.device=cuda"])
    (result,) = Engine(spec).run()
    assert result.status == "FAILED" and "train.device is cuda but this machine has no CUDA GPU" in result.message


@needs_cuda
def test_auto_device_trains_on_the_gpu_and_bf16_measures_like_fp32(tmp_path):
    run, table = run_with(tmp_path, "train.device=auto", "train.precision=bf16-mixed")
    assert resolve_device("auto").type == "cuda"
    import json

    assert json.loads((run.output_dir / "run.json").read_text())["device"].startswith("cuda")
    data = build_data(run)
    model = build_network(run, output_size(data.info())).cuda()
    inputs, targets = next(batches(data, run, 0))
    reference = measure_lnp(model, loss_for(data.info()), (inputs.cuda(), targets.cuda()), estimator="exact")
    row = table[table["step"] == 0].iloc[0]
    assert row["spectral_position"] == pytest.approx(reference.spectral_position, rel=1e-5)
    assert row["network_magnitude"] == pytest.approx(reference.network_magnitude, rel=1e-5)


def test_loss_gradient_norm_is_accumulated_in_float64_across_chunks():
    from specreach.lnp.problem import squared_norm

    # 3.5 chunks of float32 entries spanning six orders of magnitude: a float32 sum would lose the small ones.
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3 * 1024 + 512, generator=generator) * torch.logspace(-3, 3, 3 * 1024 + 512)
    reference = float(values.double().square().sum())
    assert squared_norm(values, chunk=1024) == pytest.approx(reference, rel=1e-14)
    assert squared_norm(values.reshape(7, -1)) == pytest.approx(reference, rel=1e-14)
