"""The training step's own forward on batch A, recorded for the measurement: no second forward of A.

At a measured step, a training loop runs its forward inside :func:`record_step_forward` and its
backward with ``retain_graph=True``, and passes the recording to
:func:`~specreach.lnp.measure.measure_lnp_at_step` (``step_forward=``). The measurement then takes A's
recorded module calls, their graph and the outputs from the step instead of running A's forward again.
g = ∂L/∂f and L still come from ``loss_fn`` (a loss-only backward, cheap): the step's own loss may carry
a penalty or an accumulation scale; what ``keep`` catches only shows that the step's backward ran::

    with record_step_forward(model) as recorded:
        logits = model(x)
    loss = loss_fn(logits, y)
    recorded.keep(logits, loss)
    loss.backward(retain_graph=True)
    result = measure_lnp_at_step(model, loss_fn, (x, y), batch_b, grad_a=..., outputs_a=logits,
                                 step_forward=recorded)

The step computed the measured function only if it drew no random numbers (no active dropout), ran
without autocast on full-precision weights, changed no recorded output in place, and its model's
training-mode forward equals its eval-mode forward. The last is checked once per model against a fresh
eval-mode forward, and the answer kept; a recording that fails any of these is not used (the
measurement records its own forward of A, as without one).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import torch
from torch import Tensor, nn

from specreach.lnp.distributed import unwrap
from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.lnp.problem import HALF_PRECISION, rng_states, trainable_parameters

#: Per model: whether its training-mode forward (a training step's) is its eval-mode one.
_SAME_IN_TRAINING: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


class StepForward:
    """A training step's forward on A, recorded on a tape (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.model = unwrap(model)
        self.tape = PerSampleNormTape(self.model, trainable_parameters(self.model))
        self.outputs: Tensor | None = None
        self.output_grad: Tensor | None = None
        self.loss: float | None = None
        #: False when the step cannot have computed the measured function (random numbers drawn,
        #: autocast, half-precision weights) or the forward did not finish
        self.deterministic = False

    def keep(self, outputs: Tensor, loss: Tensor) -> None:
        """The step's outputs and loss: g = ∂L/∂f is caught as the step's backward passes through them."""
        self.outputs, self.loss = outputs, float(loss.detach())
        if outputs.requires_grad:
            outputs.register_hook(self._catch)

    def _catch(self, grad: Tensor) -> None:
        self.output_grad = grad.detach()

    def usable(self, outputs: Tensor | None) -> bool:
        """Whether the measurement may take A from this recording: the step's outputs are these, it
        computed the measured function, and the step's backward has run."""
        return (self.deterministic and outputs is not None and outputs is self.outputs
                and self.output_grad is not None and self.loss is not None)

    def clear(self) -> None:
        """Drop the recorded activations (and, with the outputs, the graph the backward retained)."""
        self.tape.clear()
        self.outputs = self.output_grad = None


@contextlib.contextmanager
def record_step_forward(model: nn.Module) -> Iterator[StepForward]:
    """Record the training step's forward of ``model`` (run inside the block) for the measurement."""
    recording = StepForward(model)
    inner = recording.model
    precise = not torch.is_autocast_enabled("cpu") and not (torch.cuda.is_available() and torch.is_autocast_enabled("cuda")) \
        and not any(t.dtype in HALF_PRECISION for t in (*inner.parameters(), *inner.buffers()))
    before = rng_states(inner)
    recording.tape.prepare()
    with recording.tape:
        yield recording
    drew = not all(torch.equal(a, b) for a, b in zip(before, rng_states(inner)))
    recording.deterministic = precise and not drew


def same_in_training(model: nn.Module) -> bool | None:
    """Whether this model's training-mode forward was found equal to its eval-mode one (None: not yet asked)."""
    return _SAME_IN_TRAINING.get(model)


def note_same_in_training(model: nn.Module, step_outputs: Tensor, measured_outputs: Tensor) -> bool:
    """Compare a recorded step's outputs with the measured function's on the same batch, once per model."""
    reference = measured_outputs.detach()
    scale = float(reference.abs().max()) if reference.numel() else 0.0
    same = step_outputs.shape == reference.shape and torch.allclose(
        step_outputs.detach().to(reference.dtype), reference, rtol=1e-6, atol=1e-7 * scale)
    _SAME_IN_TRAINING[model] = same
    return same
