"""Which layers have per-sample rules, and how model plugins add their own.

The measurement core knows ``nn.Linear`` and every layer Opacus has a rule for (matched by exact
type). Layers that live in other packages — muP's ``MuReadout``, timm's ``LayerNorm`` — get their
rules from the plugin that brings them: a component registered through the ``register_layer_rules``
hook, with a ``requires`` module and an ``install()`` that calls the functions below. It is
installed the first time a measurement runs while that module is imported (a model cannot hold a
``MuReadout`` unless mup is imported), so the core itself imports neither mup nor timm.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, ContextManager, Iterator

from opacus.grad_sample.linear import compute_linear_grad_sample, compute_linear_norm_sample
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
from torch import nn

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


_SCALED_LINEARS: dict[type, Callable[[nn.Module], float]] = {}
_CALL_CONTEXTS: list[Callable[[nn.Module], ContextManager]] = [dense_embedding_gradients]
_INSTALLED: set[str] = set()


def register_linear(kind: type, input_scale: Callable[[nn.Module], float]) -> None:
    """A linear layer applied to ``input_scale(layer) · x`` (as muP's readout): the linear rules
    on the scaled input, and its closed-form share when it is the model's readout."""
    _SCALED_LINEARS[kind] = input_scale

    def grad_sample(layer, activations, backprops):
        return compute_linear_grad_sample(layer, [activations[0] * input_scale(layer)], backprops)

    def norm_sample(layer, activations, backprops):
        return compute_linear_norm_sample(layer, [activations[0] * input_scale(layer)], backprops)

    register_grad_sampler(kind)(grad_sample)
    register_norm_sampler(kind)(norm_sample)


def register_layer(kind: type, grad_sampler: Callable) -> None:
    """An Opacus grad-sample rule ``(layer, activations, backprops) -> {param: per-sample grads}``."""
    register_grad_sampler(kind)(grad_sampler)


def register_call_context(factory: Callable[[nn.Module], ContextManager]) -> None:
    """A context entered around re-running a module with stand-in parameters (per-sample VJPs,
    the explicit eNTK): e.g. muP readouts read their width from the weight, which a stand-in lacks."""
    _CALL_CONTEXTS.append(factory)


def linear_types() -> tuple[type, ...]:
    return (nn.Linear, *_SCALED_LINEARS)


def input_scale(layer: nn.Module) -> float:
    """The factor a linear layer applies to its input (1 for ``nn.Linear``)."""
    scale = _SCALED_LINEARS.get(type(layer))
    return 1.0 if scale is None else scale(layer)


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
