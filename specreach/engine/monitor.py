"""Measure the LNP components on a schedule inside any training loop, and record them.

::

    from specreach.engine import LNPMonitor, MonitorConfig, MlflowSink, TableSink

    monitor = LNPMonitor(model, loss_fn, (x_val, y_val), MonitorConfig(total_steps=1000, probes=8),
                         sink=[TableSink("metrics.csv"), MlflowSink.start("sqlite:///mlflow.db", "mine")])
    for step, (x, y) in enumerate(loader):
        optimizer.zero_grad()
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        monitor.step(step, (x, y), loss, outputs=logits)   # after backward, before the update
        optimizer.step()
        monitor.after_update()                              # optional: the actual loss change on B
    monitor.close()

Every step records the training loss; scheduled steps add every LNP component (raw and
normalized), the window (and, for explicit-kernel estimators, the spectrum in ``spectra_dir``),
the loss on B before and after the update and the change ΔL_B, with the SGD-linear prediction
−lr·D beside it (with Adam the update is preconditioned, so ΔL_B − (−lr·D) mixes the non-linear
remainder with the preconditioning). Rows go to the monitor's sink.

In a data-parallel run (``torch.distributed`` initialized with several ranks, the model wrapped in
``DistributedDataParallel``) call it on every rank with the rank's batch: each rank measures its shard
of A and of a B drawn once for all ranks, every rank gets the global batches' components, the logged
training loss is the ranks' mean, and rank 0 alone writes rows.

To spare the measurement A's second forward, record the step's own (the monitor uses it where the
step computed the measured function: no active dropout, fp32)::

        with monitor.record_forward(step):
            logits = model(x)
        loss = loss_fn(logits, y)
        monitor.keep(logits, loss)
        loss.backward(retain_graph=monitor.shares_forward(step))
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from specreach.engine.probe_plan import ProbePlan
from specreach.engine.schedule import measurement_steps
from specreach.engine.sinks import Sink, as_sink
from specreach.lnp.distributed import Ranks, unwrap
from specreach.lnp.measure import measure_lnp_at_step
from specreach.lnp.problem import call_model, measured_function, upcast
from specreach.lnp.result import LNPResult
from specreach.lnp.step_forward import StepForward, record_step_forward
from specreach.params.estimators import HutchinsonParams
from specreach.spec import LogWindows


@dataclass(frozen=True)
class MonitorConfig:
    """What to measure and when: everything the monitor needs besides the model, loss and data."""

    total_steps: int
    schedule: Any = None  # a spec's measure.schedule (windows, or a list of steps); None: default log windows
    estimator: str = "hutchinson"
    probes: int | None = None  # K; with target_rse, K of the first measurement
    # Adaptive K: each measurement's K planned from the last one's error for this relative standard error
    # of N (and so of P), within [2, max_probes] (see specreach.engine.probe_plan).
    target_rse: float | None = None
    max_probes: int = 32
    estimator_options: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None  # measurement batch B (default: the training batch's size)
    cross_batch: bool = True  # B drawn from the validation pool; False: B = A
    # A is the validation pool's first batch_size samples at every measured step instead of the
    # training batch: the same inputs throughout training (the paper's Figure 12).
    fixed_batch: bool = False
    seed: int = 0  # seeds the probe and batch-B generators (never the global RNG)
    enabled: bool = True
    # Whether the training step's gradient and outputs are those of the measured function (fp32,
    # same weights). Under mixed precision they are not, and the measurement recomputes them.
    reuse_step_gradient: bool = True
    spectra_dir: Path | None = None  # explicit-kernel estimators: where to keep each step's spectrum
    # The fast path's self-check (lnp.verify), once per model: samples independent, per-sample norms
    # equal to plain autograd's.
    verify: bool = True


class LNPMonitor:
    def __init__(self, model: nn.Module, loss_fn, validation_pool: tuple[Tensor, Tensor] | None,
                 config: MonitorConfig, sink: Sink | Iterable[Sink] | None = None):
        if config.cross_batch and validation_pool is None:
            raise ValueError("cross-batch measurement draws B from a validation pool; pass validation_pool "
                             "(inputs, targets) or MonitorConfig(cross_batch=False)")
        if config.fixed_batch and validation_pool is None:
            raise ValueError("fixed-batch measurement takes A from a validation pool; pass validation_pool")
        self.model, self.loss_fn, self.pool, self.config = model, loss_fn, validation_pool, config
        schedule = config.schedule if config.schedule is not None else LogWindows()
        self.schedule = measurement_steps(schedule, config.total_steps) if config.enabled else {}
        self.batch_size = config.batch_size
        self.sink = as_sink(sink)
        self.probe_generator = torch.Generator().manual_seed(config.seed)
        self.probe_plan = (ProbePlan(config.probes or HutchinsonParams.model_fields["probes"].default, config.target_rse, config.max_probes)
                           if config.target_rse is not None else None)
        self.pool_generator = torch.Generator().manual_seed(config.seed + 1)
        self.last_result: LNPResult | None = None
        self._pending: dict[str, Any] | None = None
        self._batch_b: tuple[Tensor, Tensor] | None = None  # this rank's shard of B
        self._global_b: tuple[Tensor, Tensor] | None = None  # B whole (the same as the shard in one process)
        self._step_forward: StepForward | None = None  # the step's forward of A, recorded (record_forward)

    @property
    def ranks(self) -> Ranks | None:
        """The ranks of a data-parallel run (None: one process): each holds a shard of A and of B."""
        return Ranks.of()

    def _writes(self) -> bool:
        """Rows are written by rank 0 alone: every rank measures the same global numbers."""
        ranks = self.ranks
        return ranks is None or ranks.rank == 0

    def should_measure(self, step: int) -> bool:
        return step in self.schedule

    def draw_batch_b(self, size: int) -> tuple[Any, Any]:
        """B for this rank: ``size`` samples drawn from the pool; in a data-parallel run, this rank's shard
        of one draw of ``size`` × ranks samples (the same draw on every rank, from the shared generator)."""
        available = _pool_size(self.pool)
        ranks = self.ranks
        count = size * (ranks.size if ranks is not None else 1)
        index = torch.randperm(available, generator=self.pool_generator)[:min(count, available)]
        return self._shard(index)

    def fixed_batch(self) -> tuple[Any, Any]:
        ranks = self.ranks
        count = (self.batch_size or _pool_size(self.pool)) * (ranks.size if ranks is not None else 1)
        return self._shard(torch.arange(min(count, _pool_size(self.pool))))[0]

    def _shard(self, index: Tensor) -> tuple[Any, Any]:
        """This rank's samples of ``index`` (all of them in one process), and the whole of them."""
        device = next(self.model.parameters()).device
        whole = _take(self.pool, index, device)
        ranks = self.ranks
        if ranks is None:
            return whole, whole
        return _take(self.pool, index.tensor_split(ranks.size)[ranks.rank], device), whole

    def shares_forward(self, step: int) -> bool:
        """Whether the measurement at ``step`` can take A's forward from the training step: measured, on
        the training batch, with the step's gradient (fp32)."""
        config = self.config
        return self.should_measure(step) and config.reuse_step_gradient and not config.fixed_batch

    @contextlib.contextmanager
    def record_forward(self, step: int) -> Iterator[StepForward | None]:
        """Wrap the training step's forward of A in this; at a measured step it is recorded, so that the
        measurement does not run A's forward again. Then call :meth:`keep` with the outputs and the
        loss, run ``loss.backward(retain_graph=True)`` (the measurement walks the step's graph), and
        :meth:`step`. Outside measured steps this does nothing."""
        if not self.shares_forward(step):
            yield None
            return
        with record_step_forward(self.model) as recorded:
            yield recorded
        self._step_forward = recorded

    def keep(self, outputs: Tensor, loss: Tensor) -> None:
        """The step's outputs and loss, after a forward in :meth:`record_forward` and before its backward."""
        if self._step_forward is not None:
            self._step_forward.keep(outputs, loss)

    def step(self, step: int, batch: tuple[Tensor, Tensor], loss: Tensor | float, outputs: Tensor | None = None,
             lr: float | None = None) -> LNPResult | None:
        """Call after ``loss.backward()`` and before the optimizer step."""
        recorded, self._step_forward = self._step_forward, None
        try:
            return self._step(step, batch, loss, outputs, lr, recorded)
        finally:
            if recorded is not None:
                recorded.clear()  # the activations and, with the outputs, the retained graph

    def _step(self, step: int, batch: tuple[Tensor, Tensor], loss: Tensor | float, outputs: Tensor | None,
              lr: float | None, recorded: StepForward | None) -> LNPResult | None:
        self._write_pending()
        loss_value = loss.item() if isinstance(loss, Tensor) else float(loss)
        ranks = self.ranks
        if ranks is not None:  # the mean of the ranks' training losses, as DDP's gradient averages theirs
            loss_value = ranks.sum([loss_value])[0] / ranks.size
        row: dict[str, Any] = {"step": step, "loss": loss_value}
        if lr is not None:
            row["lr"] = lr
        result = None
        if self.should_measure(step):
            config = self.config
            grads = [p.grad for p in self.model.parameters() if p.requires_grad]
            reuse = config.reuse_step_gradient and outputs is not None and not any(g is None for g in grads)
            if config.fixed_batch:  # the step's gradient and outputs are of another batch
                batch, reuse = self.fixed_batch(), False
            self._batch_b, self._global_b = (self.draw_batch_b(self.batch_size or _sample_count(batch[0]))
                                             if config.cross_batch else (None, None))
            result = measure_lnp_at_step(
                self.model, self.loss_fn, batch, self._batch_b,
                grad_a=grads if reuse else None, outputs_a=outputs if reuse else None,
                estimator=config.estimator, generator=self.probe_generator,
                probes=self.probe_plan.next if self.probe_plan is not None else config.probes,
                verify=config.verify, step_forward=recorded if reuse else None, **dict(config.estimator_options),
            )
            self.last_result = result
            if self.probe_plan is not None and result.probes is not None:
                dof = result.chi_net_a_dof if result.full_batch else min(result.chi_net_a_dof, result.chi_net_b_dof)
                self.probe_plan.update(result.probes, result.network_magnitude, result.network_magnitude_stderr, dof)
            row.update(window=self.schedule[step], **result.as_dict())
            if result.arrays and config.spectra_dir is not None:
                self._save_spectrum(step, result)
            if lr is not None and not config.fixed_batch:
                row["delta_loss_b_sgd_linear"] = -lr * result.grad_dot
        self._pending = row
        return result

    def _save_spectrum(self, step: int, result: LNPResult) -> None:
        """Explicit-kernel estimators give the eNTK spectrum and projections: keep them per step."""
        import numpy as np

        spectra = Path(self.config.spectra_dir)
        spectra.mkdir(parents=True, exist_ok=True)
        np.savez(spectra / f"step{step:07d}.npz", step=step,
                 **{name: np.array(values) for name, values in result.arrays.items()})

    def after_update(self) -> None:
        """Record the actual change of the loss on B across the update just made."""
        if self._pending is not None and "loss_b" in self._pending:
            batch_b = self._global_b  # loss_b was the whole B's: every rank takes it on all of B
            if batch_b is None:  # full batch: B = A, whose loss before the step is loss_a
                return self._write_pending()
            # The measured function: eval mode, full precision (loss_b was taken on it too).
            model = unwrap(self.model)
            with torch.no_grad(), torch.random.fork_rng(devices=[]), measured_function(model):
                after = float(self.loss_fn(call_model(model, upcast(batch_b[0])), upcast(batch_b[1])))
            self._pending["loss_b_after"] = after
            self._pending["delta_loss_b"] = after - self._pending["loss_b"]
        self._write_pending()

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Record extra metrics (e.g. an evaluation loss) at ``step``."""
        self._write_pending()
        if self._writes():
            self.sink.write({"step": step, **metrics})

    def _write_pending(self) -> None:
        if self._pending is not None:
            row, self._pending = self._pending, None
            if self._writes():
                self.sink.write(row)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"probe_generator": self.probe_generator.get_state(), "pool_generator": self.pool_generator.get_state()}
        if self.probe_plan is not None:
            state["probe_plan"] = self.probe_plan.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probe_generator.set_state(state["probe_generator"])
        self.pool_generator.set_state(state["pool_generator"])
        if self.probe_plan is not None and "probe_plan" in state:
            self.probe_plan.load_state_dict(state["probe_plan"])

    def flush(self) -> None:
        """Write the pending row and make everything recorded durable (before a checkpoint, at the end)."""
        self._write_pending()
        if self._writes():
            self.sink.flush()

    def close(self, status: str = "FINISHED", message: str = "") -> None:
        self.flush()
        if self._writes():
            self.sink.status(status, message)


def _pool_size(pool) -> int:
    return _sample_count(pool[0])


def _sample_count(inputs) -> int:
    """Samples in a batch's inputs: a tensor, a mapping of tensors (a tokenizer's output) or a tuple."""
    while isinstance(inputs, (Mapping, tuple, list)):
        inputs = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs[0]
    return inputs.shape[0]


def _take(values, index: Tensor, device):
    """The samples ``index`` of a pool's tensors (inputs may be a tensor, a tuple or a mapping)."""
    if isinstance(values, Tensor):
        return values[index].to(device)
    if isinstance(values, Mapping):
        return {key: _take(value, index, device) for key, value in values.items()}
    return type(values)(_take(value, index, device) for value in values)
