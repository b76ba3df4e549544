"""One run, in four steps: set up (model, data, optimizer, sinks, resume) → train with scheduled
measurement → checkpoint → finish.

:func:`run_session` is a function of its :class:`~specreach.engine.runs.RunSpec` alone (no
engine state), so any executor can call it in another process or on another machine.

- Training follows the paper's recipe: AdamW (``MuAdamW`` under muP), linear warmup, one pass
  over the data unless told otherwise; ``train.precision: bf16-mixed`` autocasts the forward pass.
  Measurements and evaluations always run in float32 on the float32 weights: the LNP components
  are sums of squared per-sample gradient norms and small differences of losses, which bfloat16's
  8 bits of mantissa would blur, and a measurement must mean the same whatever the training
  precision.
- Checkpoints every ``train.checkpoint_every`` steps, on interruption and at the end. A run whose
  folder holds a checkpoint resumes from it and ends exactly as an uninterrupted run would
  (model, optimizer, scheduler, RNG states, the data position and the sinks' positions are all
  restored); a run without one starts afresh, dropping rows of an attempt that died before its
  first checkpoint.
- Everything the run records goes through one sink: the metrics table, MLflow and status.json.
- A NaN or Inf loss ends the run as FAILED with the step and the last finite loss; bad input
  found while setting up (data that is missing, a model that does not fit the data) too.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from specreach.engine.monitor import LNPMonitor, MonitorConfig
from specreach.engine.run_folder import RunFolder, StatusSink
from specreach.engine.runs import RunResult, RunSpec
from specreach.engine.sinks import MlflowSink, Sink, Sinks, TableSink
from specreach.engine.tasks import check_model_fits_data, loss_for, output_size
from specreach.engine.training import (
    DTYPES, Progress, autocast, batches, build_data, build_network, evaluate, resolve_device, to_device, total_steps,
    warmup_factor,
)
from specreach.models.parameterization import optimizer_for, save_checkpoint
from specreach.tracking import Tracker, flatten


class Interrupted(Exception):
    """The executor asked the run to stop at a step boundary."""


def never() -> bool:
    return False


def run_session(run: RunSpec, should_stop: Callable[[], bool] = never, *, threads: int | None = None,
                progress_bar: bool = True) -> RunResult:
    """Train (or resume) one run to the end, an interruption, or a failure.

    ``threads``: torch CPU threads for this run when the spec leaves ``train.threads`` unset
    (executors that share the cores pass their share); restored afterwards.
    """
    before = torch.get_num_threads()
    threads = run.train.threads or threads
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return RunSession(run, should_stop, progress_bar=progress_bar).run()
    finally:
        torch.set_num_threads(before)


class RunSession:
    def __init__(self, run: RunSpec, should_stop: Callable[[], bool] = never, *, progress_bar: bool = True):
        self.spec, self.should_stop, self.progress_bar = run, should_stop, progress_bar
        self.folder = RunFolder(run.output_dir)
        self.sink: Sink | None = None
        self.monitor: LNPMonitor | None = None
        self.progress: Progress | None = None
        self.run_id: str | None = None
        self.step = 0

    def run(self) -> RunResult:
        """setup → train → finish; every way a run can end passes through here."""
        try:
            self.setup()
        except (ValueError, FileNotFoundError) as error:  # bad input, found before the first step
            return self.finish("FAILED", str(error))
        try:
            final = self.train()
        except Interrupted:
            self.checkpoint(self.step)
            return self.finish("KILLED", f"interrupted at step {self.step}; resume with `specreach run --resume`")
        except (FloatingPointError, ValueError) as error:
            return self.finish("FAILED", str(error))
        finally:
            if self.progress is not None:
                self.progress.close()
        return self.finish("FINISHED", "", final)

    # --- setup -------------------------------------------------------------------------------

    def setup(self) -> None:
        run = self.spec
        self.folder.path.mkdir(parents=True, exist_ok=True)
        self.device, self.dtype = resolve_device(run.train.device), DTYPES[run.train.dtype]
        self.data = build_data(run)
        info = self.data.info()
        pool = self.data.validation_pool()
        if run.measure.validation_size is not None:
            pool = (pool[0][:run.measure.validation_size], pool[1][:run.measure.validation_size])
        self.pool = pool
        self.loss_fn = loss_for(info)
        self.model = build_network(run, output_size(info)).to(device=self.device, dtype=self.dtype)
        if run.phase == "train":
            check_model_fits_data(self.model, run.recipe.params, info, to_device(pool[0][:2], self.device, self.dtype),
                                  run.recipe.kind, run.data.kind)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.steps = total_steps(run, self.data, trainable)
        self.optimizer = optimizer_for(self.model, run.recipe.parameterization, lr=run.train.lr, betas=run.train.betas,
                                       weight_decay=run.train.weight_decay, eps=run.train.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_factor(run.train.warmup_steps))
        tags = {"specreach.spec": run.spec_name, "architecture": run.recipe.kind, "size": run.size,
                "parameters": sum(p.numel() for p in self.model.parameters()), "trainable_parameters": trainable,
                "seed": run.seed, "parameterization": run.recipe.parameterization.kind, "phase": run.phase,
                "data": run.data.kind, "device": str(self.device), "precision": run.train.precision,
                **{f"sweep.{key}": value for key, value in run.sweep.items()}}

        resume = self._load_checkpoint()
        previous_run_id = resume["run_id"] if resume else self.folder.read_status().get("run_id")
        self.sink = self._open_sinks(tags, previous_run_id)
        self.monitor = LNPMonitor(
            self.model, self.loss_fn, pool if run.measure.cross_batch or run.measure.fixed_batch else None, MonitorConfig(
                total_steps=self.steps, schedule=run.measure.schedule, estimator=run.measure.estimator,
                probes=run.measure.probes, estimator_options=run.measure.options,
                batch_size=run.measure.batch_size or run.train.batch_size, cross_batch=run.measure.cross_batch,
                fixed_batch=run.measure.fixed_batch,
                seed=run.seed, enabled=run.measure.enabled, reuse_step_gradient=run.train.precision == "fp32",
                spectra_dir=self.folder.spectra, verify=run.measure.verify),
            sink=self.sink,
        )
        torch.manual_seed(run.seed)  # dropout and anything else drawing from the global RNG
        if resume is not None:
            self._restore(resume)
        else:
            self.step = 0
            self.sink.load_state_dict({})  # a fresh start: nothing recorded by an earlier attempt stays
        self.mlflow.catch_up(self.table.table.rows)  # MLflow gets exactly the rows of the table, once
        self.folder.write_description({"name": run.name, **tags, "steps": self.steps, "sweep": run.sweep,
                                       "run_spec": run.model_dump(mode="json")})
        self.sink.status("RUNNING", step=self.step)
        self.progress = Progress(run.name, self.steps, self.step, bar=self.progress_bar)

    def _open_sinks(self, tags: dict[str, Any], previous_run_id: str | None) -> Sink:
        run = self.spec
        tracker = Tracker.disabled()
        if run.tracking.enabled:
            tracker = Tracker.start(
                run.tracking.uri, run.tracking.experiment, run.name, artifact_root=run.tracking.artifact_root,
                parent_run_id=run.tracking.parent_run_id, tags={k: str(v) for k, v in tags.items()},
                params=flatten(run.model_dump(mode="json", exclude={"tracking", "output_dir"})),
                resume_run_id=previous_run_id,
            )
        self.run_id = tracker.run_id
        self.table, self.mlflow = TableSink(self.folder.metrics), MlflowSink(tracker)
        # status.json last: it is what says the run is done.
        return Sinks([self.table, self.mlflow, StatusSink(self.folder, tracker.run_id)])

    def _load_checkpoint(self) -> dict[str, Any] | None:
        if not self.folder.checkpoint.exists():
            return None
        return torch.load(self.folder.checkpoint, map_location=self.device, weights_only=True)

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.monitor.load_state_dict(state["monitor"])
        torch.set_rng_state(state["rng"].cpu())
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.sink.load_state_dict(state["sinks"])
        self.step = state["step"]

    # --- train -------------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Steps from the resumed position to the end; returns the final evaluation."""
        run, model, monitor = self.spec, self.model, self.monitor
        stream = batches(self.data, run, self.step)
        last_finite: tuple[int, float] | None = None
        for step in range(self.step, self.steps):
            self.step = step
            if self.should_stop():
                raise Interrupted
            inputs, targets = (to_device(t, self.device, self.dtype) for t in next(stream))
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(run.train.precision, self.device):
                outputs = model(inputs)
                loss = self.loss_fn(outputs, targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                previous = (f"last finite loss {last_finite[1]:.6g} at step {last_finite[0]}"
                            if last_finite is not None else "no finite loss before it")
                raise FloatingPointError(f"step {step}: the training loss is {loss_value}; {previous}. "
                                         "Lower train.lr, add train.grad_clip or train.warmup_steps.")
            last_finite = (step, loss_value)
            loss.backward()
            lr = self.scheduler.get_last_lr()[0]
            monitor.step(step, (inputs, targets), loss_value, outputs=outputs, lr=lr)
            if run.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            monitor.after_update()
            if run.train.eval_every and (step + 1) % run.train.eval_every == 0 and step + 1 < self.steps:
                monitor.record(step + 1, {"eval_loss": self._evaluate()})
            if run.train.checkpoint_every and (step + 1) % run.train.checkpoint_every == 0:
                self.checkpoint(step + 1)
            self.progress.update(step, loss_value, monitor.last_result.spectral_position
                                 if monitor.last_result else None)
        self.step = self.steps
        final = {"eval_loss": self._evaluate()}
        monitor.record(self.steps, final)
        self.checkpoint(self.steps)
        if run.phase == "train":  # probes of a trained backbone load this
            save_checkpoint(self.folder.final_model, model, run.recipe)
        return final

    def _evaluate(self) -> float:
        return evaluate(self.model, self.loss_fn, self.pool, self.monitor.batch_size, self.device, self.dtype)

    # --- checkpoint --------------------------------------------------------------------------

    def checkpoint(self, step: int) -> None:
        """Everything needed to go on from ``step``; sinks are flushed first, so what they hold is
        exactly what the checkpoint says was recorded."""
        self.monitor.flush()
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "monitor": self.monitor.state_dict(),
                 "rng": torch.get_rng_state(), "step": step, "run_id": self.run_id, "sinks": self.sink.state_dict(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}
        temporary = self.folder.checkpoint.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(self.folder.checkpoint)

    # --- finish ------------------------------------------------------------------------------

    def finish(self, status: str, message: str, final: dict[str, float] | None = None) -> RunResult:
        final = final or {}
        sink = self.sink or StatusSink(self.folder, None)  # set-up failed before the sinks were opened
        if self.monitor is not None:
            self.monitor.flush()
        for artifact in (self.folder.metrics, self.folder.spectra):
            if artifact.exists():
                sink.artifact(artifact)
        sink.status(status, message, step=self.step, final=final)
        return RunResult(self.spec.name, status, self.run_id, self.folder.path, message, final)
