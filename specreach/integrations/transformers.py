"""Measure the LNP components while a Hugging Face ``Trainer`` trains: :class:`LNPTrainerCallback`.

::

    from specreach.integrations.transformers import LNPTrainerCallback

    callback = LNPTrainerCallback({"input_ids": ids, "attention_mask": mask, "labels": ids}, probes=8)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()

(the whole example, which the tests run as it stands, is in ``docs/training-loop.md``).

A thin wrapper over :class:`~specreach.engine.monitor.LNPMonitor`. Trainer callbacks never see the
batch, so the callback keeps the keyword inputs of the model's latest training forward (a forward
pre-hook) and, on the measurement schedule, measures before the optimizer step on that batch A
and a batch B drawn from ``validation_pool``. The Trainer has clipped the gradient by then, so the
measurement recomputes A's gradient instead of reusing it.

By default the measured function is a causal language model's next-token logits,
``model(input_ids, attention_mask).logits[:, :-1]`` against ``labels[:, 1:]`` with cross-entropy
(positions labelled −100, e.g. padding, are not samples), which is the loss the model trains on.
Pass ``wrap``, ``loss_fn`` and ``split_inputs`` for other heads. Rows go to ``sinks`` (e.g. an
``MlflowSink`` or a ``TableSink``), and always to ``trainer.state.log_history`` as ``lnp/...``
entries (saved in ``trainer_state.json``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch.nn.functional as F
import transformers
from torch import Tensor, nn

from specreach.engine.monitor import LNPMonitor, MonitorConfig
from specreach.engine.sinks import Sink

_PASSED = ("input_ids", "attention_mask")


class CausalLMLogits(nn.Module):
    """The next-token logits a causal LM is trained on: positions 0 … T−2 predict labels 1 … T−1."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def causal_lm_batch(inputs: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """(model inputs, shifted labels) from a batch of ``input_ids``, ``attention_mask`` and ``labels``."""
    if "labels" not in inputs:
        raise ValueError("LNPTrainerCallback needs 'labels' in each batch (the Trainer's causal-LM collator "
                         "adds them); pass split_inputs for another layout")
    return {key: inputs[key] for key in _PASSED if key in inputs}, inputs["labels"][:, 1:]


class HistorySink(Sink):
    """Rows into the Trainer's ``state.log_history``, each metric as ``lnp/<name>``."""

    def __init__(self, state: transformers.TrainerState, prefix: str = "lnp/"):
        self.state, self.prefix = state, prefix

    def write(self, row):
        entry = {f"{self.prefix}{key}": float(value) for key, value in row.items()
                 if key != "step" and isinstance(value, (int, float))}
        self.state.log_history.append({**entry, "step": int(row["step"])})


class LNPTrainerCallback(transformers.TrainerCallback):
    """LNP measurement on a schedule inside ``Trainer.train`` (see the module docstring).

    Args:
        validation_pool: a mapping of tensors (e.g. ``input_ids``, ``attention_mask``, ``labels``) from
            which each measurement draws batch B.
        wrap: turns the Trainer's model into the measured module (default :class:`CausalLMLogits`).
        loss_fn: the loss of the measured module's outputs (default: next-token cross-entropy).
        split_inputs: turns a batch mapping into ``(module inputs, targets)``.
        sinks: where rows go besides the Trainer's ``state.log_history``.
        config: :class:`MonitorConfig` fields; ``total_steps`` defaults to the Trainer's ``max_steps``.
    """

    def __init__(self, validation_pool: Mapping[str, Tensor], *, wrap: Callable[[nn.Module], nn.Module] = CausalLMLogits,
                 loss_fn: Callable[[Tensor, Any], Tensor] = next_token_loss,
                 split_inputs: Callable[[Mapping[str, Tensor]], tuple[Any, Any]] = causal_lm_batch,
                 sinks: Sink | Iterable[Sink] | None = None, **config: Any):
        self.pool = split_inputs(validation_pool)
        self.wrap, self.loss_fn, self.split_inputs = wrap, loss_fn, split_inputs
        self.sinks, self.config = sinks, config
        self.monitor: LNPMonitor | None = None
        self.measured: nn.Module | None = None
        self._inputs: dict[str, Tensor] | None = None
        self._hook = None
        self._own_forward = False  # the callback's own forwards are not training batches
        #: (inputs, targets) of the latest measurement's batch A
        self.last_batch: tuple[Any, Any] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        options = dict(self.config)
        options.setdefault("total_steps", int(state.max_steps))
        extra = [] if self.sinks is None else [self.sinks] if isinstance(self.sinks, Sink) else list(self.sinks)
        sinks = [HistorySink(state), *extra]
        self.measured = self.wrap(model)
        self.monitor = LNPMonitor(self.measured, self.loss_fn, self.pool, MonitorConfig(**options), sink=sinks)
        self._hook = model.register_forward_pre_hook(self._keep_inputs, with_kwargs=True)

    def _keep_inputs(self, module, args, kwargs):
        if module.training and not self._own_forward:
            self._inputs = {key: value for key, value in kwargs.items() if isinstance(value, Tensor)}

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._inputs is None or not self.monitor.should_measure(state.global_step):
            return
        self.last_batch = inputs, targets = self.split_inputs(self._inputs)
        self._own_forward = True
        try:
            loss = self.loss_fn(_no_grad_call(self.measured, inputs), targets)
            # The gradient is already clipped: the measurement computes A's own (outputs=None).
            self.monitor.step(state.global_step, (inputs, targets), loss, outputs=None,
                              lr=_learning_rate(kwargs.get("optimizer")))
        finally:
            self._own_forward = False

    def on_optimizer_step(self, args, state, control, **kwargs):
        self._own_forward = True
        try:
            self.monitor.after_update()
        finally:
            self._own_forward = False

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
        self.monitor.close()


def _no_grad_call(module: nn.Module, inputs: Mapping[str, Tensor]) -> Tensor:
    import torch

    with torch.no_grad():
        return module(**inputs)


def _learning_rate(optimizer) -> float | None:
    groups = getattr(optimizer, "param_groups", None)
    return float(groups[0]["lr"]) if groups else None
