"""One run: train a model on its data, measuring the LNP components on the schedule.

:func:`run_member` is a function of its :class:`~specreach.engine.runs.RunSpec` alone (no engine
state), so that a launcher can run it in another process or on another machine.

- Training follows the paper's recipe: AdamW (``MuAdamW`` under muP), linear warmup, one pass
  over the data unless told otherwise.
- Checkpoints every ``train.checkpoint_every`` steps, on interruption and at the end; a run
  whose output directory holds a checkpoint resumes from it and ends exactly as an
  uninterrupted run would (model, optimizer, scheduler, RNG states and the data position
  are all restored).
- A NaN or Inf loss ends the run as FAILED with the step and the last finite loss.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from specreach.data.base import DataSource
from specreach.engine.metrics_table import MetricsTable
from specreach.engine.monitor import LNPMonitor
from specreach.engine.runs import RunSpec
from specreach.engine.tasks import check_model_fits_data, loss_for, output_size
from specreach.models.linear_probe import LinearProbe
from specreach.models.parameterization import build_model, builder_for, load_model, optimizer_for, save_checkpoint
from specreach.plugins import get_plugin_manager
from specreach.tracking import Tracker, flatten

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


@dataclass
class MemberResult:
    name: str
    status: str  # FINISHED, FAILED or KILLED
    run_id: str | None
    output_dir: Path
    metrics_path: Path
    message: str = ""
    final: dict[str, float] = field(default_factory=dict)


class Interrupted(Exception):
    pass


def build_data(run: RunSpec) -> DataSource:
    return get_plugin_manager().datasets()[run.data.kind].component(**run.data.params)


def build_network(run: RunSpec, outputs: int) -> nn.Module:
    if run.phase == "train":
        return build_model(run.recipe)
    if run.phase == "probe-trained":
        backbone, _ = load_model(run.backbone_checkpoint)
    else:  # a fresh random backbone, from the same recipe and seed as the trained one
        backbone = build_model(run.recipe)
    builder = builder_for(run.recipe.kind)
    size = builder.representation_size(builder.Params(**run.recipe.params))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        return LinearProbe(backbone, size, outputs)


def warmup_factor(warmup_steps: int):
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def tokens_per_sample(info) -> int:
    """Tokens one sample puts through the model: its positions for next-token tasks, else 1."""
    return info.input_shape[0] if info.task == "next-token" else 1


def total_steps(run: RunSpec, data: DataSource, parameters: int) -> int:
    if run.train.steps is not None:
        return run.train.steps
    if run.train.flops is not None:  # C = 6 · N · D: the steps this size can afford
        tokens_per_step = run.train.batch_size * tokens_per_sample(data.info())
        return max(1, round(run.train.flops / (6 * parameters * tokens_per_step)))
    samples = data.info().train_samples
    if samples is None:
        raise ValueError(f"data '{run.data.kind}' is an unbounded stream: give train.steps")
    return run.train.epochs * max(1, samples // run.train.batch_size)


def batches(data: DataSource, run: RunSpec, start: int):
    """Training batches from step ``start`` on, across epochs (epoch e uses data_seed + e)."""
    per_epoch = None
    samples = data.info().train_samples
    if samples is not None:
        per_epoch = max(1, samples // run.train.batch_size)
    epoch, offset = (start // per_epoch, start % per_epoch) if per_epoch else (0, start)
    while True:
        produced = 0
        for batch in data.train_batches(run.train.batch_size, run.train.data_seed + epoch, start=offset):
            produced += 1
            yield batch
        if produced == 0 and offset == 0:
            raise ValueError(f"data '{run.data.kind}' yields no batches of size {run.train.batch_size}")
        epoch, offset = epoch + 1, 0


def evaluate(model: nn.Module, loss_fn, pool, batch_size: int, device, dtype) -> float:
    inputs, targets = pool
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            x = _to(inputs[start:start + batch_size], device, dtype)
            y = _to(targets[start:start + batch_size], device, dtype)
            total += float(loss_fn(model(x), y)) * x.shape[0]
            count += x.shape[0]
    return total / count


def _to(tensor: torch.Tensor, device, dtype) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)


def _write_status(run: RunSpec, **status) -> None:
    run.output_dir.mkdir(parents=True, exist_ok=True)
    (run.output_dir / "status.json").write_text(json.dumps(status, indent=2, default=str))


def read_status(output_dir: Path) -> dict:
    path = Path(output_dir) / "status.json"
    return json.loads(path.read_text()) if path.exists() else {}


class Progress:
    """A progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, name: str, total: int, start: int):
        self.name, self.total = name, total
        self.every = max(1, total // 10)
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, leave=True, dynamic_ncols=True)

    def update(self, step: int, loss: float, position: float | None) -> None:
        p = f"{position:.3g}" if position is not None else "-"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {loss:.4g} P {p}", refresh=False)
        elif step % self.every == 0 or step == self.total - 1:
            print(f"[{self.name}] step {step + 1}/{self.total} loss {loss:.4g} P {p}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_member(run: RunSpec, should_stop: Callable[[], bool] = lambda: False) -> MemberResult:
    """Train (or resume) one run to the end, an interruption, or a failure."""
    threads = torch.get_num_threads()
    if run.train.threads is not None:
        torch.set_num_threads(run.train.threads)
    try:
        return _run_member(run, should_stop)
    finally:
        torch.set_num_threads(threads)


def _run_member(run: RunSpec, should_stop: Callable[[], bool]) -> MemberResult:
    run.output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run.output_dir / "checkpoint.pt"
    metrics_path = run.output_dir / "metrics.csv"
    resume = torch.load(checkpoint_path, weights_only=False) if checkpoint_path.exists() else None
    device, dtype = torch.device(run.train.device), DTYPES[run.train.dtype]

    data = build_data(run)
    info = data.info()
    pool = data.validation_pool()
    if run.measure.validation_size is not None:
        pool = (pool[0][:run.measure.validation_size], pool[1][:run.measure.validation_size])
    loss_fn = loss_for(info)
    model = build_network(run, output_size(info)).to(device=device, dtype=dtype)
    if run.phase == "train":
        check_model_fits_data(model, run.recipe.params, info, _to(pool[0][:2], device, dtype),
                              run.recipe.kind, run.data.kind)
    steps = total_steps(run, data, sum(p.numel() for p in model.parameters() if p.requires_grad))
    optimizer = optimizer_for(model, run.recipe.parameterization, lr=run.train.lr, betas=run.train.betas,
                              weight_decay=run.train.weight_decay, eps=run.train.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(run.train.warmup_steps))

    parameters = sum(p.numel() for p in model.parameters())
    tags = {"specreach.spec": run.spec_name, "architecture": run.recipe.kind, "size": run.size,
            "parameters": parameters, "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "seed": run.seed, "parameterization": run.recipe.parameterization.kind, "phase": run.phase,
            "data": run.data.kind, **{f"sweep.{key}": value for key, value in run.sweep.items()}}
    tracker = Tracker.disabled()
    if run.tracking.enabled:
        tracker = Tracker.start(
            run.tracking.uri, run.tracking.experiment, run.name, artifact_root=run.tracking.artifact_root,
            parent_run_id=run.tracking.parent_run_id, tags={k: str(v) for k, v in tags.items()},
            params=flatten(run.model_dump(mode="json", exclude={"tracking", "output_dir"})),
            resume_run_id=resume["run_id"] if resume else None,
        )
    table = MetricsTable(metrics_path)
    monitor = LNPMonitor(
        model, loss_fn, pool if run.measure.cross_batch else None, total_steps=steps,
        schedule=run.measure.schedule, estimator=run.measure.estimator, probes=run.measure.probes,
        estimator_options=run.measure.options, batch_size=run.measure.batch_size or run.train.batch_size,
        cross_batch=run.measure.cross_batch, seed=run.seed, tracker=tracker, table=table,
        spectra_dir=run.output_dir / "spectra",
    )
    if not run.measure.enabled:
        monitor.schedule = {}

    start = 0
    torch.manual_seed(run.seed)  # dropout and anything else drawing from the global RNG
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        monitor.load_state_dict(resume["monitor"])
        torch.set_rng_state(resume["rng"])
        start = resume["step"]
        table.truncate(resume["table_rows"])  # rows written after the checkpoint are recomputed

    def checkpoint(step: int) -> None:
        monitor.flush()
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "monitor": monitor.state_dict(), "rng": torch.get_rng_state(), "step": step, "run_id": tracker.run_id,
                 "table_rows": len(table.rows)}
        temporary = checkpoint_path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(checkpoint_path)

    (run.output_dir / "run.json").write_text(json.dumps(
        {"name": run.name, **tags, "steps": steps, "sweep": run.sweep, "run_spec": run.model_dump(mode="json")},
        indent=2, default=str))
    _write_status(run, status="RUNNING", run_id=tracker.run_id, step=start)
    progress = Progress(run.name, steps, start)
    last_finite = (None, None)
    status, message = "FINISHED", ""
    step = start
    try:
        stream = batches(data, run, start)
        for step in range(start, steps):
            if should_stop():
                raise Interrupted
            inputs, targets = (_to(t, device, dtype) for t in next(stream))
            optimizer.zero_grad(set_to_none=True)
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                previous = (f"last finite loss {last_finite[1]:.6g} at step {last_finite[0]}"
                            if last_finite[0] is not None else "no finite loss before it")
                raise FloatingPointError(f"step {step}: the training loss is {loss_value}; {previous}. "
                                         "Lower train.lr, add train.grad_clip or train.warmup_steps.")
            last_finite = (step, loss_value)
            loss.backward()
            lr = scheduler.get_last_lr()[0]
            monitor.step(step, (inputs, targets), loss_value, outputs=outputs, lr=lr)
            if run.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
            optimizer.step()
            scheduler.step()
            monitor.after_update()
            if run.train.eval_every and (step + 1) % run.train.eval_every == 0 and step + 1 < steps:
                monitor.record(step + 1, {"eval_loss": evaluate(model, loss_fn, pool, monitor.batch_size, device, dtype)})
            if run.train.checkpoint_every and (step + 1) % run.train.checkpoint_every == 0:
                checkpoint(step + 1)
            progress.update(step, loss_value, monitor.last_result.spectral_position if monitor.last_result else None)
        final = {"eval_loss": evaluate(model, loss_fn, pool, monitor.batch_size, device, dtype)}
        monitor.record(steps, final)
        checkpoint(steps)
        if run.phase == "train":  # probes of a trained backbone load this
            save_checkpoint(run.output_dir / "final.pt", model, run.recipe)
    except Interrupted:
        checkpoint(step)
        status, message, final = "KILLED", f"interrupted at step {step}; resume with `specreach run --resume`", {}
    except (FloatingPointError, ValueError) as error:
        status, message, final = "FAILED", str(error), {}
    finally:
        progress.close()
    monitor.flush()
    tracker.log_artifact(metrics_path)
    if (run.output_dir / "spectra").is_dir():
        tracker.log_artifact(run.output_dir / "spectra")
    tracker.finish(status, message or None)
    _write_status(run, status=status, run_id=tracker.run_id, step=step, message=message, final=final)
    return MemberResult(run.name, status, tracker.run_id, run.output_dir, metrics_path, message, final)
