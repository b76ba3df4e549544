"""Which layers have per-sample rules, what each rule was proven exact for, and how plugins add their own.

A layer rule turns one call's input and output gradient into per-sample gradients (or their norms)
without re-running the layer. It is trusted only within the configurations it was proven on
against the per-sample VJP (``tests/test_layer_rules.py``): each :class:`LayerRule` says which
those are (``proven``, in words for ``docs/estimators.md``) and refuses the rest (``refuses``:
why this layer is outside them). A layer outside its rule's configurations — a convolution with
circular padding, an ``EmbeddingBag``, a layer of a type nobody proved — takes the per-sample VJP,
which is exact for any layer. Matching is by exact type: a subclass may change the math.

The measurement core knows ``nn.Linear``, ``nn.Embedding``, the norms and the convolutions. Layers
that live in other packages — muP's ``MuReadout``, timm's ``LayerNorm`` — get their rules from the
plugin that brings them: a component registered through the ``register_layer_rules`` hook, with a
``requires`` module and an ``install()`` that calls the ``register_*`` functions below. It is
installed the first time a measurement runs while that module is imported (a model cannot hold a
``MuReadout`` unless mup is imported), so the core itself imports neither mup nor timm.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.grad_sample.group_norm import compute_group_norm_grad_sample
from opacus.grad_sample.instance_norm import compute_instance_norm_grad_sample
from torch import nn

from specreach.lnp import grad_samplers

#: (layer, activations, backprops) -> {parameter: per-sample gradients}, Opacus's grad-sampler signature.
GradSampler = Callable[..., dict]


@dataclass(frozen=True)
class LayerRule:
    """A per-sample rule for one layer type, and where it is exact.

    ``method`` names the computation (:class:`~specreach.lnp.per_sample_norms.PerSampleNormTape`
    has one per method): ``linear`` (ghost norms or materialized, on ``input_scale(layer) · x``),
    ``embedding``, ``layer_norm``, ``rms_norm``, or ``grad_sampler`` (``grad_sampler`` gives the
    per-sample gradients).
    """

    method: str
    proven: str  # the configurations it was proven exact for, in words
    refuses: Callable[[nn.Module], str | None] = lambda layer: None  # why a layer is outside them, or None
    grad_sampler: GradSampler | None = None
    input_scale: Callable[[nn.Module], float] | None = None  # linear: the factor applied to the input


def _complex_refusal(layer: nn.Module) -> str | None:
    """The rules' closed forms are for real weights (a complex one needs conjugates)."""
    if any(p.is_complex() for p in layer.parameters(recurse=False)):
        return "complex parameters"
    return None


def _conv_refusal(layer: nn.Module) -> str | None:
    if layer.padding_mode != "zeros":  # type: ignore[union-attr]
        # Opacus unfolds a zero-padded input: the circular/reflect/replicate borders would be zeros.
        return f"padding_mode={layer.padding_mode!r} (the rule unfolds a zero-padded input)"
    return _complex_refusal(layer)


def _batch_norm_refusal(layer: nn.Module) -> str | None:
    if layer.training or layer.running_mean is None:  # type: ignore[union-attr]
        return "the batch's own statistics (the rule normalizes with the running statistics)"
    return _complex_refusal(layer)


def _instance_norm_refusal(layer: nn.Module) -> str | None:
    if layer.track_running_stats:  # type: ignore[union-attr]
        return "track_running_stats=True (the rule normalizes with the sample's own statistics)"
    return _complex_refusal(layer)


_LINEAR = "any input shape (…, in_features), with or without bias, real weights"
_RULES: dict[type, LayerRule] = {
    nn.Linear: LayerRule("linear", _LINEAR, _complex_refusal, input_scale=lambda layer: 1.0),
    nn.Embedding: LayerRule("embedding", "with or without padding_idx, dense or sparse gradients, real weights",
                            _complex_refusal),
    nn.LayerNorm: LayerRule("layer_norm", "any normalized_shape, with or without bias, real weights",
                            _complex_refusal),
    nn.RMSNorm: LayerRule("rms_norm", "any normalized_shape, real weights", _complex_refusal),
    nn.GroupNorm: LayerRule("grad_sampler", "affine, any number of groups, real weights", _complex_refusal,
                            compute_group_norm_grad_sample),
    **{kind: LayerRule("grad_sampler", "padding_mode='zeros' with integer, tuple, 'same' or 'valid' padding; any "
                       "stride, dilation and groups; with or without bias; channels-last inputs; real weights",
                       _conv_refusal, compute_conv_grad_sample)
       for kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
    **{kind: LayerRule("grad_sampler", "affine with track_running_stats=False, real weights",
                       _instance_norm_refusal, compute_instance_norm_grad_sample)
       for kind in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)},
    **{kind: LayerRule("grad_sampler", "affine, on running statistics (eval mode), any number of spatial dims, "
                       "real weights", _batch_norm_refusal, grad_samplers.batch_norm)
       for kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)},
}


def layer_rule(layer: nn.Module) -> LayerRule | None:
    """The rule for this layer's exact type, if it has one (whether or not the layer is within it)."""
    return _RULES.get(type(layer))


def applicable_rule(layer: nn.Module) -> LayerRule | None:
    """The rule for this layer, if the layer is within the configurations the rule was proven on."""
    rule = layer_rule(layer)
    return rule if rule is not None and rule.refuses(layer) is None else None


def rules() -> dict[type, LayerRule]:
    """Every registered rule by layer type (for the documentation's table)."""
    return dict(_RULES)


def linear_types() -> tuple[type, ...]:
    return tuple(kind for kind, rule in _RULES.items() if rule.method == "linear")


def input_scale(layer: nn.Module) -> float:
    """The factor a linear layer applies to its input (1 for ``nn.Linear``)."""
    rule = layer_rule(layer)
    return 1.0 if rule is None or rule.input_scale is None else rule.input_scale(layer)


def register_linear(kind: type, input_scale: Callable[[nn.Module], float]) -> None:
    """A linear layer applied to ``input_scale(layer) · x`` (as muP's readout): the linear rules
    on the scaled input, and its closed-form share when it is the model's readout."""
    _RULES[kind] = LayerRule("linear", _LINEAR, _complex_refusal, input_scale=input_scale)


def register_layer(kind: type, grad_sampler: GradSampler, proven: str,
                   refuses: Callable[[nn.Module], str | None] = _complex_refusal) -> None:
    """A per-sample rule ``grad_sampler(layer, activations, backprops) -> {param: per-sample grads}``
    (Opacus's signature), trusted for the configurations ``proven`` describes and ``refuses`` does
    not turn away. Prove it against the per-sample VJP for each of them in your plugin's tests."""
    _RULES[kind] = LayerRule("grad_sampler", proven, refuses, grad_sampler)


def register_same_math(kind: type, like: type) -> None:
    """A layer type that computes exactly what ``like`` computes (timm's ``LayerNorm`` is
    ``nn.LayerNorm`` with an optional fused kernel): ``like``'s rule, within ``like``'s bounds."""
    _RULES[kind] = _RULES[like]


@contextlib.contextmanager
def dense_embedding_gradients(module: nn.Module) -> Iterator[None]:
    """``nn.Embedding(sparse=True)`` gives sparse gradients, which ``torch.func`` cannot batch; the
    function is the same with dense ones."""
    sparse = [m for m in module.modules() if isinstance(m, nn.Embedding) and m.sparse]
    for embedding in sparse:
        embedding.sparse = False
    try:
        yield
    finally:
        for embedding in sparse:
            embedding.sparse = True


_CALL_CONTEXTS: list[Callable[[nn.Module], ContextManager]] = [dense_embedding_gradients]
_INSTALLED: set[str] = set()


def register_call_context(factory: Callable[[nn.Module], ContextManager]) -> None:
    """A context entered around re-running a module with stand-in parameters (per-sample VJPs,
    the explicit eNTK): e.g. muP readouts read their width from the weight, which a stand-in lacks."""
    _CALL_CONTEXTS.append(factory)


@contextlib.contextmanager
def functional_call_context(module: nn.Module) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for factory in _CALL_CONTEXTS:
            stack.enter_context(factory(module))
        yield


def install_layer_rules() -> None:
    """Install every registered layer-rule component whose module is in use (once each)."""
    from specreach.plugins import get_plugin_manager

    for name, registered in get_plugin_manager().layer_rules().items():
        if name in _INSTALLED:
            continue
        requires = registered.attribute("requires")
        if requires is not None and requires not in sys.modules:
            continue  # its layers cannot exist yet; looked at again by the next measurement
        registered.component.install()
        _INSTALLED.add(name)
