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
- Checkpoints are on by default: after every run of consecutive measured steps (a measurement
  window), whenever ``train.checkpoint_minutes`` passed since the last one, every
  ``train.checkpoint_every`` steps if set, on interruption and at the end; each is written to a
  temporary file, synced to disk and renamed, so a crash leaves the previous one whole, and carries
  a checksum of its contents (:mod:`specreach.state_digest`), so one damaged on disk is refused. A run
  whose folder holds a checkpoint resumes from it and ends exactly as an uninterrupted run would
  (model, optimizer, scheduler, RNG states, the data position and the sinks' positions are all
  restored); a run without one starts afresh, dropping rows of an attempt that died before its
  first checkpoint. A stop asked for during a measurement abandons it between two probes and
  checkpoints the state from before the step.
- A run folder holds one experiment: its status and checkpoint carry the run's fingerprint
  (:func:`~specreach.engine.runs.fingerprint`), and a run never resumes from, or reports, what
  another fingerprint recorded. The folder is locked while the run trains.
- Everything the run records goes through one sink: the metrics table, MLflow and status.json.
- Every error ends only this run: FAILED, with the message in status.json and MLflow and the
  traceback in traceback.txt (a NaN or Inf loss says the step and the last finite loss). A second
  Ctrl-C stops at once: KILLED, and the last checkpoint stays as it was.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from typing import Any, Callable

import torch

from specreach.engine.locks import FolderBusy, FolderLock
from specreach.engine.monitor import LNPMonitor, MonitorConfig
from specreach.engine.progress import Progress
from specreach.engine.run_folder import DamagedFile, RunFolder, StatusSink, sync_folder
from specreach.engine.runs import RunResult, RunSpec, Status, code_version, fingerprint
from specreach.engine.sinks import MlflowSink, RunStart, Sink, Sinks, TableSink
from specreach.lnp.distributed import Ranks
from specreach.lnp.probes import MeasurementStopped, stop_between_probes
from specreach.engine.tasks import batch_problem, check_model_fits_data, loss_for, output_size
from specreach.engine.training import (
    DTYPES, autocast, batches, build_data, build_network, evaluate, model_recipe, resolve_device, to_device,
    total_steps, warmup_factor,
)
from specreach.models.parameterization import optimizer_for, save_checkpoint
from specreach.plugins import lookup
from specreach.state_digest import mismatch, with_digest
from specreach.tracking import Tracker, flatten


class Interrupted(Exception):
    """The executor asked the run to stop at a step boundary."""


class OtherExperiment(ValueError):
    """The run folder holds what another run spec (or specreach release) recorded."""


def never() -> bool:
    return False


def run_session(run: RunSpec, should_stop: Callable[[], bool] = never, *, threads: int | None = None,
                progress_bar: bool = True, report: Callable[[dict], None] | None = None) -> RunResult:
    """Train (or resume) one run to the end, an interruption, or a failure.

    ``threads``: torch CPU threads for this run when the spec leaves ``train.threads`` unset
    (executors that share the cores pass their share); restored afterwards. ``report``: where its
    progress goes as events instead of the terminal (:mod:`specreach.engine.progress`).
    """
    before = torch.get_num_threads()
    threads = run.train.threads or threads
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if run.train.distributed.processes > 1:  # launches the ranks, each of which runs a RunSession
            from specreach.engine.distributed_run import launch

            return launch(run, should_stop, threads=torch.get_num_threads(), progress_bar=progress_bar,
                          report=report)
        return RunSession(run, should_stop, progress_bar=progress_bar, report=report).run()
    finally:
        torch.set_num_threads(before)


def load_checkpoint(path) -> dict[str, Any] | None:
    """A run's checkpoint (None when there is none), loaded with ``weights_only``: tensors and plain
    data only, so nothing in the file can run code. A damaged or foreign file is a DamagedFile."""
    if not path.exists():
        return None
    remedy = "delete it to start the run again from step 0 (or rerun with --overwrite)"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle.UnpicklingError, a truncated zip, an empty file ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            reason = ("it holds Python objects besides tensors and plain data, which are not loaded (a checkpoint "
                      "that specreach writes never does)")
        raise DamagedFile(path, f"cannot be loaded as a checkpoint: {reason}", remedy) from None
    missing = {"model", "optimizer", "scheduler", "monitor", "rng", "step", "sinks"} - set(
        state if isinstance(state, dict) else ())
    if missing:
        raise DamagedFile(path, f"is not a specreach checkpoint (it lacks {', '.join(sorted(missing))})", remedy)
    if mismatch(state):
        raise DamagedFile(path, "does not match the checksum written with it: its contents changed on disk after it "
                                "was written (a damaged disk or memory, a flipped bit), and resuming from it would "
                                "give other numbers", remedy)
    return state


class RunSession:
    """One run in this process; in a data-parallel run (``torch.distributed`` initialized by
    :mod:`specreach.engine.distributed_run`), one rank of it: every rank trains its shard of each global
    batch and measures, rank 0 alone writes (run folder, checkpoints, metrics, MLflow), and the launcher
    holds the folder's lock for all of them (``lock=False``)."""

    def __init__(self, run: RunSpec, should_stop: Callable[[], bool] = never, *, progress_bar: bool = True,
                 report: Callable[[dict], None] | None = None, lock: bool = True):
        self.spec, self.should_stop, self.progress_bar, self.report = run, should_stop, progress_bar, report
        self.lock = lock
        self.ranks = Ranks.of()
        self.writes = self.ranks is None or self.ranks.rank == 0
        self.folder = RunFolder(run.output_dir)
        self.fingerprint, self.code = fingerprint(run), code_version()
        self.sink: Sink | None = None
        self.mlflow: MlflowSink | None = None
        self.monitor: LNPMonitor | None = None
        self.progress: Progress | None = None
        self.run_id: str | None = None
        self.step = 0
        self.before_step: dict[str, Any] | None = None  # state at the start of a measured step
        self.final: dict[str, float] | None = None  # the final evaluation, when resumed after the end
        self.last_checkpoint = time.monotonic()

    def run(self) -> RunResult:
        """setup → train → finish; every way a run can end passes through here."""
        if not self.lock:
            return self._locked_run()
        try:
            with FolderLock(self.folder.path, "run folder"):
                return self._locked_run()
        except FolderBusy as error:  # another process runs it: its folder is not ours to write
            return RunResult(self.spec.name, "FAILED", None, self.folder.path, str(error))

    def _locked_run(self) -> RunResult:
        try:
            resume = self._load_checkpoint()
            self._check_same_experiment(resume)
        except (OtherExperiment, DamagedFile) as error:  # what the folder holds is left untouched
            return RunResult(self.spec.name, "FAILED", None, self.folder.path, str(error))
        try:
            return self._attempt(resume)
        except KeyboardInterrupt:  # a second Ctrl-C, wherever it landed: the last checkpoint stays as it was
            self.finish("KILLED", f"stopped at once during step {self.step}; `specreach run --resume` continues "
                                  "from the last checkpoint", flush=False)
            raise
        finally:
            if self.progress is not None:
                self.progress.close()

    def _attempt(self, resume: dict[str, Any] | None) -> RunResult:
        try:
            self.setup(resume)
            final = self.train()
        except Interrupted:
            self.checkpoint(self.step, self.before_step)
            return self.finish("KILLED", f"interrupted at step {self.step}; resume with `specreach run --resume`")
        except Exception as error:  # whatever it is, it ends this run only
            return self.finish("FAILED", self._failure_message(error))
        if self.writes:
            self.folder.prune_checkpoints(self.spec.train.keep_checkpoints)
        return self.finish("FINISHED", "", final)

    def _failure_message(self, error: BaseException) -> str:
        """The error in a line, with its traceback kept in the run folder."""
        where = ""
        if not self.writes:  # another rank's: its worker prints it, rank 0 keeps the run folder's
            traceback.print_exception(error)
        else:
            try:
                self.folder.traceback.write_text("".join(traceback.format_exception(error)))
                where = f" (traceback: {self.folder.traceback})"
            except OSError:
                pass
        if type(error) in (ValueError, FileNotFoundError, FloatingPointError, OSError, DamagedFile):
            return f"{error}{where}"  # errors that explain themselves: bad input, a diverged run, a full disk
        return f"{type(error).__name__}: {error}{where}"

    def _check_same_experiment(self, resume: dict[str, Any] | None) -> None:
        """Never resume or overwrite what another run spec recorded here."""
        recorded = self.folder.read_status().get("fingerprint") if self.folder.status_file.exists() else None
        if resume is not None:
            recorded = resume.get("fingerprint")
        if (recorded is None and not self.folder.recorded()) or recorded == self.fingerprint:
            return
        raise OtherExperiment(f"{self.folder.path} holds a run of another experiment (fingerprint {recorded}, this "
                              f"run's is {self.fingerprint}); give a fresh output folder, or rerun with --overwrite")

    # --- setup -------------------------------------------------------------------------------

    def setup(self, resume: dict[str, Any] | None) -> None:
        run = self.spec
        if self.writes:
            self.folder.path.mkdir(parents=True, exist_ok=True)
        self.device, self.dtype = resolve_device(run.train.device), DTYPES[run.train.dtype]
        if self.ranks is not None and self.device.type == "cuda":  # one GPU per process, set by the launcher
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.data = build_data(run)
        info = self.data.info()
        pool = self.data.validation_pool()
        if run.measure.validation_size is not None:
            pool = (pool[0][:run.measure.validation_size], pool[1][:run.measure.validation_size])
        self._check_validation_pool(pool, info)
        self.pool = pool
        self.loss_fn = loss_for(info)
        self.recipe = model_recipe(run, info)  # with what the data decides (a Llama's vocab when not given)
        self.model = build_network(run, output_size(info), self.recipe).to(device=self.device, dtype=self.dtype)
        if run.phase == "train":
            check_model_fits_data(self.model, self.recipe.params, info, to_device(pool[0][:2], self.device, self.dtype),
                                  run.recipe.kind, run.data.kind)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.steps = total_steps(run, self.data, trainable)
        self.optimizer = optimizer_for(self.model, run.recipe.parameterization, lr=run.train.lr, betas=run.train.betas,
                                       weight_decay=run.train.weight_decay, eps=run.train.eps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_factor(run.train.warmup_steps))
        # What trains: the model, or DDP around it (which averages the ranks' gradients in backward). The
        # model itself is what is checkpointed, evaluated and saved: the same keys as a one-process run's.
        self.trained = self.model
        if self.ranks is not None:
            from torch.nn.parallel import DistributedDataParallel

            self.trained = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        shards = self.ranks.size if self.ranks is not None else 1
        tags = {"specreach.spec": run.spec_name, "architecture": run.recipe.kind, "size": run.size,
                "parameters": sum(p.numel() for p in self.model.parameters()), "trainable_parameters": trainable,
                "seed": run.seed, "parameterization": run.recipe.parameterization.kind, "phase": run.phase,
                "data": run.data.kind, "device": str(self.device), "precision": run.train.precision,
                "specreach.fingerprint": self.fingerprint, "specreach.code": self.code,
                **{f"sweep.{key}": value for key, value in run.sweep.items()}}

        previous_run_id = resume["run_id"] if resume else self.folder.read_status().get("run_id")
        self.sink = self._open_sinks(tags, previous_run_id) if self.writes else Sinks([])
        self.monitor = LNPMonitor(
            self.trained, self.loss_fn, pool if run.measure.cross_batch or run.measure.fixed_batch else None, MonitorConfig(
                total_steps=self.steps, schedule=run.measure.schedule, estimator=run.measure.estimator,
                probes=run.measure.probes, target_rse=run.measure.target_rse, max_probes=run.measure.max_probes,
                estimator_options=run.measure.options,
                # per rank: the monitor draws B as this many samples from each rank, one draw for all
                batch_size=(run.measure.batch_size or run.train.batch_size) // shards,
                cross_batch=run.measure.cross_batch,
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
        if not self.writes:
            return
        self.mlflow.catch_up(self.table.table.rows)  # MLflow gets exactly the rows of the table, once
        self.folder.write_description({"name": run.name, **tags, "steps": self.steps, "sweep": run.sweep,
                                       "fingerprint": self.fingerprint, "code_version": self.code,
                                       "run_spec": run.model_dump(mode="json")})
        self.sink.status("RUNNING", step=self.step)
        self.progress = Progress(run.name, self.steps, self.step, bar=self.progress_bar,
                                 measured=self.monitor.schedule, report=self.report)

    def _check_validation_pool(self, pool, info) -> None:
        """The pool is where measurement batches B come from and what evaluation averages over."""
        run = self.spec
        where = f"the validation pool of data '{run.data.kind}' ({len(pool[0])} samples)"
        problem = batch_problem(pool[0], pool[1], info)
        if problem:
            raise ValueError(f"{where} cannot be measured or evaluated on: {problem}; the data is at fault: fix the "
                             "data source")
        batch = run.measure.batch_size or run.train.batch_size
        if run.measure.enabled and (run.measure.cross_batch or run.measure.fixed_batch) and batch > len(pool[0]):
            raise ValueError(f"measure.batch_size: {batch} is more than {where}, which batch B is drawn from; set "
                             f"measure.batch_size to at most {len(pool[0])}, or give the data a larger pool")

    def _open_sinks(self, tags: dict[str, Any], previous_run_id: str | None) -> Sink:
        run = self.spec
        tracker = Tracker.disabled()
        start = RunStart(run.name, run.spec_name, self.folder.path, {k: str(v) for k, v in tags.items()},
                         flatten(run.model_dump(mode="json", exclude={"tracking", "output_dir"})))
        if run.tracking.enabled:
            tracker = Tracker.start(
                run.tracking.uri, run.tracking.experiment, run.name, artifact_root=run.tracking.artifact_root,
                parent_run_id=run.tracking.parent_run_id, tags=start.tags, params=start.config,
                resume_run_id=previous_run_id,
            )
        self.run_id = tracker.run_id
        self.table, self.mlflow = TableSink(self.folder.metrics), MlflowSink(tracker)
        chosen = [lookup("sink", choice.kind).component(start, **choice.params) for choice in run.tracking.sinks]
        # status.json last: it is what says the run is done.
        self.status_sink = StatusSink(self.folder, tracker.run_id, fingerprint=self.fingerprint, code=self.code)
        self.status_sink.tracking_state = self.mlflow.record
        return Sinks([self.table, self.mlflow, *chosen, self.status_sink])

    def _load_checkpoint(self) -> dict[str, Any] | None:
        state = load_checkpoint(self.folder.checkpoint)
        if state is not None and state.get("code") not in (None, self.code):
            import warnings

            warnings.warn(f"{self.spec.name}: resuming a checkpoint written by specreach {state['code']} with "
                          f"{self.code}", stacklevel=2)
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as error:  # another width or architecture
            raise DamagedFile(self.folder.checkpoint, f"does not fit this run's model ({str(error).splitlines()[0]} "
                              "…)", "delete it to start the run again, or rerun with --overwrite") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.monitor.load_state_dict(state["monitor"])
        torch.set_rng_state(state["rng"].cpu())
        if state.get("model_buffers"):
            self.model.load_state_dict(state["model_buffers"], strict=False)
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.sink.load_state_dict(state["sinks"])
        self.step = state["step"]
        self.final = state.get("final")

    # --- train -------------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Steps from the resumed position to the end; returns the final evaluation."""
        run, model, monitor, ranks = self.spec, self.trained, self.monitor, self.ranks
        assert monitor is not None, "the session is prepared before it trains"
        stream = batches(self.data, run, self.step)
        # A stop is agreed at step boundaries only: a rank that stopped alone, or between two probes, would
        # leave the others waiting in a collective.
        should_stop = self.should_stop if ranks is None else lambda: ranks.sum([float(self.should_stop())])[0] > 0
        probe_stop = self.should_stop if ranks is None else never
        last_finite: tuple[int, float] | None = None
        for step in range(self.step, self.steps):
            self.step = step
            self.before_step = None
            if should_stop():
                raise Interrupted
            if monitor.should_measure(step):  # a stop during the measurement goes back to here
                self.before_step = self._state_before_step()
                self._progress("measuring", step)
            inputs, targets = (to_device(t, self.device, self.dtype) for t in self._shard(next(stream)))
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(run.train.precision, self.device):
                with monitor.record_forward(step):  # at a measured step, A's forward for the measurement
                    outputs = model(inputs)
                loss = self.loss_fn(outputs, targets)
            monitor.keep(outputs, loss)
            loss_value = loss.item()
            # Every rank judges the global batch's loss, so all of them stop on it together.
            global_loss = loss_value if ranks is None else ranks.sum([loss_value])[0] / ranks.size
            if not math.isfinite(global_loss):
                bad_data = batch_problem(inputs, targets, self.data.info())
                if bad_data:
                    raise ValueError(f"step {step}: the training batch of data '{run.data.kind}' for this step "
                                     f"(train.data_seed {run.train.data_seed}, batch size {run.train.batch_size}) "
                                     f"makes the loss {loss_value}: {bad_data}. The data is at fault, not the "
                                     "learning rate: fix the data source")
                previous = (f"last finite loss {last_finite[1]:.6g} at step {last_finite[0]}"
                            if last_finite is not None else "no finite loss before it")
                raise FloatingPointError(f"step {step}: the training loss is {global_loss}; {previous}. "
                                         "Lower train.lr, add train.grad_clip or train.warmup_steps.")
            last_finite = (step, global_loss)
            loss.backward(retain_graph=monitor.shares_forward(step))
            lr = self.scheduler.get_last_lr()[0]
            try:
                with stop_between_probes(probe_stop):
                    monitor.step(step, (inputs, targets), loss_value, outputs=outputs, lr=lr)
            except MeasurementStopped:
                raise Interrupted from None
            del outputs, loss  # a measured step's graph was retained for the measurement: free it now
            if run.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            monitor.after_update()
            if run.train.eval_every and (step + 1) % run.train.eval_every == 0 and step + 1 < self.steps:
                monitor.record(step + 1, {"eval_loss": self._evaluate()})
            if self._checkpoint_due(step) and step + 1 < self.steps:
                self.checkpoint(step + 1)
            self._progress("update", step, global_loss, monitor.last_result.spectral_position
                           if monitor.last_result else None)
        if self.final is not None:  # the checkpoint was written after the end: nothing is recorded twice
            return self.final
        self.step = self.steps
        final = {"eval_loss": self._evaluate()}
        monitor.record(self.steps, final)
        if run.phase == "train" and self.writes:  # probes of a trained backbone load this
            save_checkpoint(self.folder.final_model, self.model, self.recipe)
        self.checkpoint(self.steps, final=final)
        return final

    def _shard(self, batch):
        """This rank's equal share of a global batch (all of it in one process): the ranks together train on
        exactly the batch one process would."""
        if self.ranks is None:
            return batch
        return tuple(t.tensor_split(self.ranks.size)[self.ranks.rank] for t in batch)

    def _progress(self, what: str, *args) -> None:
        if self.progress is not None:
            getattr(self.progress, what)(*args)

    def _evaluate(self) -> float:
        batch = self.spec.measure.batch_size or self.spec.train.batch_size  # the global size, on every rank
        return evaluate(self.model, self.loss_fn, self.pool, batch, self.device, self.dtype)

    def _checkpoint_due(self, step: int) -> bool:
        """After a window of measured steps, every checkpoint_every steps, every checkpoint_minutes."""
        train = self.spec.train
        return (self.monitor.should_measure(step) and not self.monitor.should_measure(step + 1)) \
            or bool(train.checkpoint_every and (step + 1) % train.checkpoint_every == 0) \
            or time.monotonic() - self.last_checkpoint >= train.checkpoint_minutes * 60

    def _state_before_step(self) -> dict[str, Any]:
        """What a measured step changes before the update: RNG states and buffers (e.g. batch-norm
        statistics); kept so that a stop during its measurement checkpoints the step's start."""
        return {"rng": torch.get_rng_state(), "monitor": self.monitor.state_dict(),
                "model_buffers": {name: buffer.detach().clone() for name, buffer in self.model.named_buffers()},
                "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None}

    # --- checkpoint --------------------------------------------------------------------------

    def checkpoint(self, step: int, before_step: dict[str, Any] | None = None,
                   final: dict[str, float] | None = None) -> None:
        """Everything needed to go on from ``step``; sinks are flushed first, so what they hold is
        exactly what the checkpoint says was recorded. ``before_step``: the RNG states and buffers
        from the start of ``step`` (a measurement was abandoned half-way)."""
        self.monitor.flush()
        if not self.writes:  # rank 0 writes it; every rank holds the same state
            return
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "monitor": self.monitor.state_dict(),
                 "rng": torch.get_rng_state(), "step": step, "run_id": self.run_id, "sinks": self.sink.state_dict(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
                 "fingerprint": self.fingerprint, "code": self.code, **(before_step or {}),
                 **({"final": final} if final is not None else {})}
        state = with_digest(state)  # loading recomputes it: a flipped bit on disk is refused
        path = self.folder.checkpoint
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(path)
            sync_folder(path.parent)
        except (OSError, RuntimeError) as error:  # a full disk, a quota, a vanished mount
            temporary.unlink(missing_ok=True)
            raise OSError(f"cannot write the checkpoint {path} ({str(error).strip().splitlines()[0]}); is the disk "
                          "full? The previous checkpoint is intact: free space, then `specreach run --resume`") \
                from None
        self.last_checkpoint = time.monotonic()

    # --- finish ------------------------------------------------------------------------------

    def finish(self, status: Status, message: str, final: dict[str, float] | None = None, *,
               flush: bool = True) -> RunResult:
        """Record how the run ended, in every sink. ``flush``: False after a hard stop, whose rows
        after the last checkpoint are recomputed by the resumed run."""
        final = final or {}
        details = {"step": self.step, "final": final}
        if not self.writes:
            if flush and self.monitor is not None:
                self.monitor.flush()
            return RunResult(self.spec.name, status, self.run_id, self.folder.path, message, final)
        try:
            if self.sink is None:  # set-up failed before the sinks were opened
                StatusSink(self.folder, None, fingerprint=self.fingerprint, code=self.code).status(
                    status, message, **details)
            else:
                if flush and self.monitor is not None:
                    self.monitor.flush()
                if not flush:
                    self.mlflow.drop_pending()
                for artifact in (self.folder.metrics, self.folder.spectra):
                    if flush and artifact.exists():
                        self.sink.artifact(artifact)
                self.sink.status(status, message, **details)
        except OSError as error:  # e.g. a full disk while recording the end: say both
            message = f"{message}; recording the outcome failed too: {error}".lstrip("; ")
            status = "FAILED"
        if self.mlflow is not None and not self.mlflow.complete:
            import warnings

            root = self.folder.path.parent.parent
            warnings.warn(f"{self.spec.name}: MLflow did not get all of this run ({self.mlflow.failure}); the run "
                          f"folder keeps it: upload it later with `specreach sync {root} --tracking-uri URI`",
                          stacklevel=2)
        return RunResult(self.spec.name, status, self.run_id, self.folder.path, message, final)
