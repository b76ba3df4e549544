"""Measure the LNP components on a schedule inside any training loop, and record them.

::

    monitor = LNPMonitor(model, loss_fn, validation_pool=(x_val, y_val), total_steps=1000,
                         tracking_uri="sqlite:///mlflow.db", experiment="mine")
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
normalized), the window (and, for explicit-kernel estimators, the spectrum in ``spectra_dir``), the loss on B before and after the update and the change
ΔL_B, with the SGD-linear prediction −lr·D beside it (with Adam the update is preconditioned,
so ΔL_B − (−lr·D) mixes the non-linear remainder with the preconditioning).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from specreach.engine.metrics_table import MetricsTable
from specreach.engine.schedule import measurement_steps
from specreach.lnp.measure import measure_lnp_at_step
from specreach.lnp.result import LNPResult
from specreach.spec import LogWindows
from specreach.tracking import Tracker


class LNPMonitor:
    def __init__(
        self,
        model: nn.Module,
        loss_fn,
        validation_pool: tuple[Tensor, Tensor] | None,
        *,
        total_steps: int,
        schedule: LogWindows | list[int] | None = None,
        estimator: str = "hutchinson",
        probes: int | None = None,
        estimator_options: dict[str, Any] | None = None,
        batch_size: int | None = None,
        cross_batch: bool = True,
        seed: int = 0,
        tracker: Tracker | None = None,
        table: MetricsTable | str | Path | None = None,
        tracking_uri: str | None = None,
        experiment: str = "specreach",
        run_name: str = "monitor",
        spectra_dir: str | Path | None = None,
    ):
        if cross_batch and validation_pool is None:
            raise ValueError("cross-batch measurement draws B from a validation pool; pass validation_pool "
                             "(inputs, targets) or cross_batch=False")
        self.model, self.loss_fn = model, loss_fn
        self.pool = validation_pool
        self.schedule = measurement_steps(schedule if schedule is not None else LogWindows(), total_steps)
        self.estimator, self.probes, self.options = estimator, probes, dict(estimator_options or {})
        self.batch_size = batch_size
        self.cross_batch = cross_batch
        self.probe_generator = torch.Generator().manual_seed(seed)
        self.pool_generator = torch.Generator().manual_seed(seed + 1)
        if tracker is None and tracking_uri is not None:
            tracker = Tracker.start(tracking_uri, experiment, run_name)
        self.tracker = tracker or Tracker.disabled()
        self.table = MetricsTable(Path(table)) if isinstance(table, (str, Path)) else table
        self.spectra_dir = Path(spectra_dir) if spectra_dir is not None else None
        self.last_result: LNPResult | None = None
        self._pending: dict[str, Any] | None = None
        self._batch_b: tuple[Tensor, Tensor] | None = None
        self._lr: float | None = None

    def should_measure(self, step: int) -> bool:
        return step in self.schedule

    def draw_batch_b(self, size: int) -> tuple[Tensor, Tensor]:
        inputs, targets = self.pool
        count = min(size, inputs.shape[0])
        index = torch.randperm(inputs.shape[0], generator=self.pool_generator)[:count]
        device = next(self.model.parameters()).device
        return inputs[index].to(device), targets[index].to(device)

    def step(self, step: int, batch: tuple[Tensor, Tensor], loss: Tensor | float, outputs: Tensor | None = None,
             lr: float | None = None) -> LNPResult | None:
        """Call after ``loss.backward()`` and before the optimizer step."""
        self._write_pending()
        row: dict[str, Any] = {"step": step, "loss": loss.item() if isinstance(loss, Tensor) else float(loss)}
        if lr is not None:
            row["lr"] = lr
        self._lr = lr
        result = None
        if self.should_measure(step):
            params = [p for p in self.model.parameters() if p.requires_grad]
            grads = [p.grad for p in params]
            self._batch_b = self.draw_batch_b(self.batch_size or batch[0].shape[0]) if self.cross_batch else None
            result = measure_lnp_at_step(
                self.model, self.loss_fn, batch, self._batch_b,
                grad_a=None if any(g is None for g in grads) else grads, outputs_a=outputs,
                estimator=self.estimator, probes=self.probes, generator=self.probe_generator, **self.options,
            )
            self.last_result = result
            row.update(window=self.schedule[step], **result.as_dict())
            if result.eigenvalues is not None and self.spectra_dir is not None:
                self._save_spectrum(step, result)
            if lr is not None:
                row["delta_loss_b_sgd_linear"] = -lr * result.grad_dot
        self._pending = row
        return result

    def _save_spectrum(self, step: int, result: LNPResult) -> None:
        """Explicit-kernel estimators give the eNTK spectrum and projections: keep them per step."""
        import numpy as np

        self.spectra_dir.mkdir(parents=True, exist_ok=True)
        np.savez(self.spectra_dir / f"step{step:07d}.npz", eigenvalues=np.array(result.eigenvalues),
                 projections=np.array(result.projections), step=step)

    def after_update(self) -> None:
        """Record the actual change of the loss on B across the update just made."""
        if self._pending is not None and "loss_b" in self._pending:
            batch_b = self._batch_b
            if batch_b is None:  # full batch: B = A, whose loss before the step is loss_a
                return self._write_pending()
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                after = float(self.loss_fn(self.model(batch_b[0]), batch_b[1]))
            self._pending["loss_b_after"] = after
            self._pending["delta_loss_b"] = after - self._pending["loss_b"]
        self._write_pending()

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Record extra metrics (e.g. an evaluation loss) at ``step``."""
        self._write_pending()
        self._write({"step": step, **metrics})

    def _write_pending(self) -> None:
        if self._pending is not None:
            row, self._pending = self._pending, None
            self._write(row)

    def _write(self, row: dict[str, Any]) -> None:
        if self.table is not None:
            self.table.append(row)
        metrics = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)}
        self.tracker.log_metrics(row["step"], metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"probe_generator": self.probe_generator.get_state(), "pool_generator": self.pool_generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probe_generator.set_state(state["probe_generator"])
        self.pool_generator.set_state(state["pool_generator"])

    def flush(self) -> None:
        """Write the pending row and send buffered metrics (before a checkpoint, at the end)."""
        self._write_pending()
        self.tracker.flush()

    def close(self, status: str = "FINISHED", message: str | None = None) -> None:
        self._write_pending()
        self.tracker.finish(status, message)
