"""The measurement entry points: :func:`measure_lnp` and, for training loops, :func:`measure_lnp_at_step`."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from specreach.lnp.distributed import Ranks, gather_shards, unwrap
from specreach.lnp.estimator import Estimator, PerSampleNormEstimator
from specreach.lnp.layer_rules import install_layer_rules
from specreach.lnp.loss_units import IgnoreIndex
from specreach.lnp.problem import (
    LossFn, MeasurementProblem, check_measurable, make_batch, measured_function,
    trainable_parameters, untouched,
)
from specreach.lnp.result import LNPResult
from specreach.lnp.step_forward import StepForward
from specreach.lnp.verify import verify_once
from specreach.plugins import get_plugin_manager


def measure_lnp(
    model: nn.Module,
    loss_fn: LossFn,
    batch_a: tuple[Any, Any],
    batch_b: tuple[Any, Any] | None = None,
    *,
    estimator: str | Estimator = "exact",
    probes: int | None = None,
    generator: torch.Generator | None = None,
    units_a: int | None = None,
    units_b: int | None = None,
    ignore_index: IgnoreIndex = "auto",
    loss_mask_a: Tensor | None = None,
    loss_mask_b: Tensor | None = None,
    verify: bool = True,
    process_group: Any = "auto",
    **estimator_options: Any,
) -> LNPResult:
    """Measure the LNP components D = ⟨∇L_B, ∇L_A⟩ = L · N · P of ``model`` on two batches.

    Args:
        model: any ``nn.Module``; θ is its parameters with ``requires_grad=True``. Its per-sample
            output f_i is ``model(inputs)[i]`` with all trailing dimensions flattened.
        loss_fn: ``loss_fn(outputs, targets)`` returning the mean-reduced scalar loss.
        batch_a, batch_b: ``(inputs, targets)`` pairs; ``batch_b=None`` measures the full batch (B = A).
        estimator: a registered estimator name (``exact``, ``hutchinson``, ``entk``, or a plugin's)
            or an estimator instance.
        probes: number of random probes, for estimators that draw them (default: the estimator's).
        generator: the probes' random generator; the global RNG is never drawn from. Default: a
            freshly, non-deterministically seeded generator.
        units_a, units_b: loss-reduction units m for the normalized components; default: the number
            of counted target elements (samples, or tokens for sequence targets; class-probability
            targets of a cross-entropy or KL loss count one per distribution).
        ignore_index: target value of positions the loss ignores; they are not samples (left out of
            J, so of N, and of m). ``"auto"``: the value a cross-entropy/NLL loss declares, else −100,
            where the loss gradient is zero there; ``None``: every position counts.
        loss_mask_a, loss_mask_b: boolean masks over the outputs' leading dims (True: the position
            enters the loss), for losses that mask positions some other way.
        verify: the fast path's self-check, once per model (default on; estimators built on
            per-sample norms): on two samples of A, each sample alone must give its outputs in the
            batch (else :class:`~specreach.lnp.verify.SamplesCoupledError`), and the per-sample norms
            must agree with plain autograd one sample at a time (else
            :class:`~specreach.lnp.verify.VerificationError`, with the mismatch per parameter group).
            It is cached on the model's structure and parameters (:func:`~specreach.lnp.verify.verify_once`);
            ``verify=False`` skips it.
        process_group: in a data-parallel run, the ranks whose shards make the global batches
            (``"auto"``: the default group once ``torch.distributed`` is initialized with several ranks;
            None: this process's batches alone). Every rank passes its shards and gets the components of
            the concatenated batches.
        estimator_options: the estimator's own parameters (validated by its ``Params`` model).

    The measured function is the model in eval mode (dropout off) at full precision (autocast
    off; float16/bfloat16 weights, inputs and targets in float32): D, L and N come from one
    deterministic function. Models whose samples are coupled
    (BatchNorm on batch statistics) and summed losses are refused.

    The model comes back as it was: parameters, buffers, ``.grad``, train/eval mode, hooks and
    the global RNG state are untouched. A zero loss gradient gives ``spectral_position = NaN``.
    """
    return measure_lnp_at_step(
        model, loss_fn, batch_a, batch_b, estimator=estimator, probes=probes, generator=generator,
        units_a=units_a, units_b=units_b, ignore_index=ignore_index, loss_mask_a=loss_mask_a,
        loss_mask_b=loss_mask_b, verify=verify, process_group=process_group, **estimator_options,
    )


def measure_lnp_at_step(
    model: nn.Module,
    loss_fn: LossFn,
    batch_a: tuple[Any, Any],
    batch_b: tuple[Any, Any] | None = None,
    *,
    grad_a: Sequence[Tensor] | Mapping[str, Tensor] | None = None,
    outputs_a: Tensor | None = None,
    estimator: str | Estimator = "exact",
    probes: int | None = None,
    generator: torch.Generator | None = None,
    units_a: int | None = None,
    units_b: int | None = None,
    ignore_index: IgnoreIndex = "auto",
    loss_mask_a: Tensor | None = None,
    loss_mask_b: Tensor | None = None,
    verify: bool = True,
    process_group: Any = "auto",
    step_forward: StepForward | None = None,
    **estimator_options: Any,
) -> LNPResult:
    """:func:`measure_lnp` for a training loop that already has the step's work on batch A.

    ``grad_a`` is the training step's gradient ∇_θ L_A (e.g. ``[p.grad for p in trainable]`` after
    ``loss.backward()``, or a name → tensor mapping), so D needs no second backward on A;
    ``outputs_a`` are the step's outputs (logits) and must come with it: the gradient is reused
    only if the step computed the measured function (same outputs). After a step with active
    dropout or in mixed precision it is recomputed on the measured function instead, and
    ``result.step_gradient_reused`` is False. ``step_forward``: the step's forward on A recorded with
    :func:`~specreach.lnp.step_forward.record_step_forward` (and its backward run with
    ``retain_graph=True``), so that A's forward comes from the step too; used where the step
    computed the measured function (see :mod:`specreach.lnp.step_forward`).

    In a data-parallel run (``torch.distributed`` initialized with several ranks; ``process_group``
    picks another group, None measures this process's batches alone) every rank passes its shards
    of A and B, and every rank gets the components of the concatenated batches; a DDP-wrapped model
    is measured through the module it wraps (see :mod:`specreach.lnp.distributed`).
    """
    install_layer_rules()
    est = resolve_estimator(estimator, estimator_options, probes)
    ranks = Ranks.of(process_group)
    model = unwrap(model)
    params = trainable_parameters(model)
    check_measurable(model)
    generator = generator if generator is not None else _fresh_generator()
    if ranks is not None and not isinstance(est, PerSampleNormEstimator):
        # The explicit kernel (and a plugin's estimator) sees the global batches whole, on every rank.
        batch_a, loss_mask_a, units_a = gather_shards(ranks, batch_a, loss_mask_a, units_a)
        if batch_b is not None:
            batch_b, loss_mask_b, units_b = gather_shards(ranks, batch_b, loss_mask_b, units_b)
        if grad_a is not None:
            grad_a = outputs_a = None  # of this rank's shard: recomputed on the whole batch
        ranks = step_forward = None
    elif ranks is not None:
        generator = ranks.fork(generator)
    if grad_a is not None and outputs_a is None:
        raise ValueError("grad_a needs outputs_a, the training step's outputs on batch A: they show whether the "
                         "step computed the measured function (no active dropout, same precision)")
    problem = MeasurementProblem(
        model=model,
        loss_fn=loss_fn,
        params=params,
        batch_a=make_batch(batch_a, "a", units_a, loss_mask_a),
        batch_b=None if batch_b is None else make_batch(batch_b, "b", units_b, loss_mask_b),
        generator=generator,
        probes=getattr(est.params, "probes", None),
        grad_a=None if grad_a is None else _align_gradient(grad_a, params),
        outputs_a=None if outputs_a is None else outputs_a.detach(),
        ignore_index=ignore_index,
        ranks=ranks,
        step_forward=step_forward if step_forward is not None and grad_a is not None
        and step_forward.usable(outputs_a) else None,
    )
    with untouched(model), measured_function(model), _graphs_cached_across_forwards_refused():
        if verify and isinstance(est, PerSampleNormEstimator):
            with ranks.agreed() if ranks is not None else contextlib.nullcontext():  # each rank checks its shard
                verify_once(model, loss_fn, batch_a, params=params, ignore_index=ignore_index, loss_mask=loss_mask_a)
        return est.measure(problem)


@contextlib.contextmanager
def _graphs_cached_across_forwards_refused() -> Iterator[None]:
    """The measurement runs several forwards and backwards; a model that keeps a tensor computed from its
    parameters from one forward to the next fails autograd's second backward through it. Say what it is."""
    try:
        yield
    except RuntimeError as error:
        if "backward through the graph a second time" not in str(error):
            raise
        raise ValueError(
            "the model's forward reuses a tensor that an earlier forward computed from the parameters (a cache kept "
            "across calls, such as timm LeViT's attention-bias cache in eval mode), so gradients cannot reach those "
            "parameters through it a second time. Recompute it in every forward to measure this model (for LeViT: a "
            "forward pre-hook on each attention module that empties its attention_bias_cache)") from error


def available_estimators() -> list[str]:
    return list(get_plugin_manager().estimators())


def resolve_estimator(estimator: str | Estimator, options: Mapping[str, Any], probes: int | None = None) -> Estimator:
    """The estimator to measure with; ``probes`` is a shorthand for its ``probes`` option."""
    if isinstance(estimator, Estimator):
        if options or probes is not None:
            raise TypeError("estimator options (probes too) go to the estimator's constructor when passing an "
                            "instance, e.g. Hutchinson(probes=16)")
        return estimator
    if probes is not None:
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise ValueError(f"probes must be a positive integer, got {probes!r}")
        registered = get_plugin_manager().lookup("estimator", estimator)
        if not registered.attribute("uses_probes", False):
            raise ValueError(f"estimator '{estimator}' draws no probes; leave probes unset")
        options = {**options, "probes": probes}
    return get_plugin_manager().create("estimator", estimator, **options)


def _fresh_generator() -> torch.Generator:
    generator = torch.Generator()
    generator.seed()  # from the OS, not from the global RNG
    return generator


def _align_gradient(grad_a, params: Mapping[str, nn.Parameter]) -> tuple[Tensor, ...]:
    if isinstance(grad_a, Mapping):
        missing = [name for name in params if name not in grad_a]
        if missing:
            raise ValueError(f"grad_a has no gradient for trainable parameters {missing[:5]}")
        grads = [grad_a[name] for name in params]
    else:
        grads = list(grad_a)
    if len(grads) != len(params):
        raise ValueError(f"grad_a has {len(grads)} tensors for {len(params)} trainable parameters")
    aligned = []
    for (name, p), g in zip(params.items(), grads):
        if g is None:
            g = torch.zeros_like(p)
        if g.shape != p.shape:
            raise ValueError(f"grad_a for {name} has shape {tuple(g.shape)}, the parameter {tuple(p.shape)}")
        aligned.append(g.detach())
    return tuple(aligned)
