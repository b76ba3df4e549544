"""Measure the LNP components while PyTorch Lightning trains: :class:`LNPCallback`.

::

    from specreach.integrations.lightning import LNPCallback

    trainer = lightning.Trainer(max_steps=20, accelerator="cpu", logger=lightning.pytorch.loggers.CSVLogger("logs"),
                                callbacks=[LNPCallback(F.cross_entropy, (x_val, y_val), estimator="hutchinson")])
    trainer.fit(module, loader)     # the components go to the trainer's loggers as lnp/<name>

(the whole example, which the tests run as it stands, is in ``docs/training-loop.md``).

A thin wrapper over :class:`~specreach.engine.monitor.LNPMonitor`: on the measurement schedule
(default: the paper's log-spaced windows over ``trainer.estimated_stepping_batches``) it measures
the LightningModule's own function on the training batch A and a batch B from the validation pool,
after the backward and before the optimizer step (and before gradient clipping), and logs every
component through the trainer's loggers (``lnp/...``), or to the sinks you pass.

The module's forward must return per-sample outputs (logits) and each batch must be
``(inputs, targets)`` (else pass ``split_batch``). The step's gradient is reused when the step
computed the measured function (its logits are captured from the module's forward); with gradient
accumulation, dropout or mixed precision it is recomputed on batch A alone.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import lightning
from torch import Tensor

from specreach.engine.monitor import LNPMonitor, MonitorConfig
from specreach.engine.sinks import Sink


class LoggerSink(Sink):
    """Rows to the trainer's loggers, each metric under ``prefix``, at the row's step."""

    def __init__(self, trainer: lightning.Trainer, prefix: str = "lnp/"):
        self.trainer, self.prefix = trainer, prefix

    def write(self, row):
        metrics = {f"{self.prefix}{key}": float(value) for key, value in row.items()
                   if key != "step" and isinstance(value, (int, float))}
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=int(row["step"]))


def _inputs_and_targets(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError("LNPCallback needs each training batch as (inputs, targets); pass split_batch=... to say "
                    f"how to get them from a {type(batch).__name__}")


class LNPCallback(lightning.Callback):
    """LNP measurement on a schedule inside ``Trainer.fit`` (see the module docstring).

    Args:
        loss_fn: the mean-reduced loss of the module's outputs, ``loss_fn(outputs, targets)``.
        validation_pool: ``(inputs, targets)`` from which each measurement draws batch B.
        sinks: where rows go (default: the trainer's loggers).
        split_batch: turns a training batch into ``(inputs, targets)``.
        config: :class:`MonitorConfig` fields (``estimator``, ``probes``, ``schedule``, ``batch_size``,
            ...); ``total_steps`` defaults to the trainer's estimated stepping batches.
    """

    def __init__(self, loss_fn: Callable[[Tensor, Any], Tensor], validation_pool: tuple[Any, Any],
                 sinks: Sink | Iterable[Sink] | None = None,
                 split_batch: Callable[[Any], tuple[Any, Any]] = _inputs_and_targets, **config: Any):
        self.loss_fn, self.pool, self.sinks, self.split_batch = loss_fn, validation_pool, sinks, split_batch
        self.config = config
        self.monitor: LNPMonitor | None = None
        self._batch = self._loss = self._outputs = None
        self._capture = None
        self._state: dict | None = None

    def setup(self, trainer, pl_module, stage):
        if stage != "fit" or self.monitor is not None:
            return
        options = dict(self.config)
        options.setdefault("total_steps", int(trainer.estimated_stepping_batches))
        sinks = self.sinks if self.sinks is not None else LoggerSink(trainer)
        self.monitor = LNPMonitor(pl_module, self.loss_fn, self.pool, MonitorConfig(**options), sink=sinks)
        if self._state is not None:
            self.monitor.load_state_dict(self._state)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._batch, self._outputs = self.split_batch(batch), None
        if self.monitor.should_measure(trainer.global_step):
            self._capture = pl_module.register_forward_hook(self._keep_outputs)

    def _keep_outputs(self, module, args, output):
        if isinstance(output, Tensor) and self._outputs is None:
            self._outputs = output

    def on_before_backward(self, trainer, pl_module, loss):
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
        # With accumulation the gradient is of several batches: measure A's own gradient instead.
        outputs = self._outputs if trainer.accumulate_grad_batches == 1 else None
        self.monitor.step(trainer.global_step, self._batch, self._loss, outputs=outputs, lr=_learning_rate(optimizer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.monitor.after_update()

    def on_train_end(self, trainer, pl_module):
        self.monitor.close()

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict() if self.monitor is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._state = state_dict
        if self.monitor is not None and state_dict:
            self.monitor.load_state_dict(state_dict)


def _learning_rate(optimizer) -> float | None:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None


__all__ = ["LNPCallback", "LoggerSink"]
