"""Per-sample squared gradient norms, Σ_p ‖∂(rᵢᵀfᵢ)/∂p‖², from module hooks.

A :class:`PerSampleNormTape` is active during one forward pass. It records, for every
module that directly owns trainable parameters, the module's inputs and output. Then
:meth:`PerSampleNormTape.squared_norms` takes one backward of ``Σ_i r_iᵀ f_i`` that asks
autograd only for the gradients with respect to those module outputs — the parameters'
own gradients (half of an ordinary backward) are never computed — and turns
(activations, output gradients) into per-sample norms with Opacus's per-layer rules:

- linear layers: ghost norms ``Σ_{t,t'} (a_t·a_t')(g_t·g_t')`` when the sequence is short
  (T² < d_in·d_out), otherwise the per-sample gradient is materialized — whichever is cheaper;
- other layers with an Opacus norm rule (embeddings): the norm rule;
- layers with an Opacus grad-sample rule (norms, convolutions, …): the per-sample gradient;
- anything else (e.g. timm's ViT, which owns ``cls_token`` and ``pos_embed`` at its root):
  a vmapped vector-Jacobian product of that module with respect to its own parameters.

Parameters shared between modules, or modules called more than once, need their
per-sample gradients summed before taking the norm, so they take the materializing path.

One forward serves any number of backwards (``retain_graph``): probes differ only in r.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from opacus.grad_sample.grad_sample_module import GradSampleHooks
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping
from torch import Tensor, nn

from specreach.lnp import opacus_rules  # noqa: F401  (registers the extra Opacus rules)

GRAD_SAMPLERS = GradSampleHooks.GRAD_SAMPLERS
NORM_SAMPLERS = GradSampleHooksFastGradientClipping.NORM_SAMPLERS
LINEAR_TYPES = (nn.Linear, *opacus_rules.MUP_READOUTS)


@dataclass
class _Call:
    args: tuple
    kwargs: dict
    output: Tensor
    version: int


@dataclass
class _Owner:
    """A module with trainable parameters of its own (``recurse=False``)."""

    path: str
    module: nn.Module
    params: dict[str, nn.Parameter]  # local attribute name -> parameter
    calls: list[_Call]


def group_of(param_name: str) -> str:
    """The top-level submodule a parameter belongs to (root-owned ones: their own name)."""
    return param_name.split(".", 1)[0]


class PerSampleNormTape:
    """Hooks that record what per-sample norms need, for one forward pass at a time."""

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter]):
        self.model = model
        self.param_names = {id(p): name for name, p in params.items()}
        owners_of: dict[int, int] = {}
        self._owners: list[_Owner] = []
        for path, module in model.named_modules(remove_duplicate=False):
            own = {
                local: p
                for local, p in module.named_parameters(recurse=False)
                if id(p) in self.param_names
            }
            if own and not any(o.module is module for o in self._owners):
                self._owners.append(_Owner(path, module, own, []))
                for p in own.values():
                    owners_of[id(p)] = owners_of.get(id(p), 0) + 1
        self._shared = {pid for pid, count in owners_of.items() if count > 1}
        self._handles: list = []

    def __enter__(self) -> "PerSampleNormTape":
        for owner in self._owners:
            owner.calls.clear()
            self._handles.append(
                owner.module.register_forward_hook(self._recorder(owner), with_kwargs=True)
            )
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def clear(self) -> None:
        """Drop the recorded tensors (and with them the activations they keep alive)."""
        for owner in self._owners:
            owner.calls.clear()

    @staticmethod
    def _recorder(owner: _Owner):
        def record(module, args, kwargs, output):
            if not isinstance(output, Tensor):
                raise TypeError(
                    f"module '{owner.path or type(module).__name__}' owns trainable parameters but returns "
                    f"{type(output).__name__}; per-sample norms need modules with parameters to return a tensor. "
                    "Wrap the parameters in a submodule that does, or use estimator='entk'."
                )
            owner.calls.append(_Call(args, kwargs, output, output._version))

        return record

    def linear_readout(self, outputs: Tensor) -> "LinearReadout | None":
        """The linear layer that produced ``outputs`` itself, if there is one (an LM's head)."""
        for owner in self._owners:
            if (type(owner.module) in LINEAR_TYPES and len(owner.calls) == 1 and owner.calls[0].output is outputs
                    and not any(id(p) in self._shared for p in owner.params.values())):
                return LinearReadout(owner, self.param_names)
        return None

    def squared_norms(self, outputs: Tensor, vectors: Tensor, skip: "LinearReadout | None" = None) -> dict[str, Tensor]:
        """Per-sample ``‖∂(Σ_i vectors_iᵀ outputs_i)/∂p‖²`` for each trainable parameter name.

        ``outputs`` may be any recorded tensor, e.g. a readout's input; ``skip`` leaves that
        readout's own parameters out (their share is computed in closed form).
        """
        calls = [(owner, call) for owner in self._owners for call in owner.calls
                 if skip is None or owner is not skip.owner]
        for owner, call in calls:
            if call.output._version != call.version:
                raise RuntimeError(
                    f"the output of module '{owner.path}' was modified in place after it was computed, so its "
                    "gradient cannot be recovered; make the operation that follows it out of place "
                    "(e.g. inplace=False)."
                )
        backprops = torch.autograd.grad(
            outputs, [call.output for _, call in calls], grad_outputs=vectors,
            retain_graph=True, allow_unused=True,
        )
        with torch.no_grad():  # the norms themselves are never differentiated
            return self._norms_from(calls, backprops, vectors.shape[0])

    def _norms_from(self, calls, backprops, n: int) -> dict[str, Tensor]:
        norms: dict[str, Tensor] = {}
        summed_grads: dict[int, Tensor] = {}  # per-sample gradients to sum before the norm
        for (owner, call), backprop in zip(calls, backprops):
            if backprop is None:
                continue
            materialize = len(owner.calls) > 1 or any(id(p) in self._shared for p in owner.params.values())
            for param, value, is_norm in _per_sample(owner, call, backprop, materialize):
                if is_norm:
                    norms[self.param_names[id(param)]] = value.square()
                else:
                    pid = id(param)
                    summed_grads[pid] = summed_grads[pid] + value if pid in summed_grads else value
        for pid, grads in summed_grads.items():
            norms[self.param_names[pid]] = grads.reshape(n, -1).square().sum(dim=1)
        return norms


class LinearReadout:
    """A linear layer whose output is the model's output, f_t = W (c·a_t) + b at each position t.

    Its own share of χ_net needs no probe: ∂f_{t,v}/∂W = e_v (c·a_t)ᵀ, so per sample
    Σ_{t,v} ‖·‖² = d_out Σ_t ‖c·a_t‖², and the bias adds d_out·T. Below it, a probe r on
    the outputs reaches the readout's input as u_t = c·Wᵀr_t with E[u_t u_tᵀ] = c² WᵀW; drawing
    u_t = c·S z_t with S Sᵀ = WᵀW and z over d_in coordinates gives the same expectation for every
    parameter below. For a language model head (d_in = hidden ≪ d_out = vocabulary) this removes
    the largest backward and the largest per-sample norm from every probe.
    """

    def __init__(self, owner: _Owner, param_names: dict[int, str]):
        self.owner = owner
        self.module = owner.module
        self.param_names = param_names
        call = owner.calls[0]
        self.input = call.args[0]
        scale = opacus_rules.readout_input_scale(self.module) if isinstance(self.module, opacus_rules.MUP_READOUTS) else 1.0
        self.scale = scale
        self.positions = call.output[0].numel() // self.module.out_features

    def worthwhile(self) -> bool:
        return self.module.in_features < self.module.out_features and self.input.requires_grad

    def squared_norms(self) -> dict[str, Tensor]:
        with torch.no_grad():
            n = self.input.shape[0]
            inputs = self.input.reshape(n, -1, self.module.in_features).double() * self.scale
            norms = {}
            if self.module.weight.requires_grad:
                norms[self.param_names[id(self.module.weight)]] = self.module.out_features * inputs.square().sum(dim=(1, 2))
            if self.module.bias is not None and self.module.bias.requires_grad:
                norms[self.param_names[id(self.module.bias)]] = inputs.new_full(
                    (n,), float(self.module.out_features * self.positions))
            return norms

    def input_mixing(self) -> Tensor:
        """c·Sᵀ with S Sᵀ = WᵀW (eigen-decomposition; W may be rank-deficient, e.g. zero-initialized)."""
        with torch.no_grad():
            weight = self.module.weight.double()
            eigenvalues, eigenvectors = torch.linalg.eigh(weight.T @ weight)
            root = eigenvectors * eigenvalues.clamp(min=0).sqrt()
            return (self.scale * root.T).to(self.input.dtype)


def _per_sample(owner: _Owner, call: _Call, backprop: Tensor, materialize: bool):
    """Yield (parameter, per-sample norm or gradient, is_norm) for one call of one owner."""
    module = owner.module
    kind = type(module)
    if kind in LINEAR_TYPES:
        yield from _linear(module, call, backprop, materialize)
    elif not materialize and kind in NORM_SAMPLERS:
        for param, norm in NORM_SAMPLERS[kind](module, _contiguous(call.args), backprop).items():
            yield param, norm, True
    elif kind in GRAD_SAMPLERS:
        for param, grad in GRAD_SAMPLERS[kind](module, _contiguous(call.args), backprop).items():
            yield param, grad, False
    else:
        yield from _vmap_vjp(owner, call, backprop)


def _contiguous(args: tuple) -> list:
    """Opacus's rules ``view`` their inputs (e.g. token ids sliced from a longer window)."""
    return [a.contiguous() if isinstance(a, Tensor) else a for a in args]


def _linear(module: nn.Linear, call: _Call, backprop: Tensor, materialize: bool):
    """Linear layers over any number of positions: ghost norm or materialized gradient, by cost."""
    n = backprop.shape[0]
    activations = call.args[0].reshape(n, -1, module.in_features)
    backprop = backprop.reshape(n, -1, module.out_features)
    positions = activations.shape[1]
    rule = GRAD_SAMPLERS[type(module)]
    # Ghost norm: O(T² (d_in + d_out)); materializing: O(T d_in d_out).
    ghost = not materialize and positions * positions < module.in_features * module.out_features
    if ghost:
        rule = NORM_SAMPLERS[type(module)]
    for param, value in rule(module, [activations], backprop).items():
        yield param, value, ghost


def _vmap_vjp(owner: _Owner, call: _Call, backprop: Tensor):
    """Per-sample gradients of an owner's own parameters by a vmapped VJP of that module."""
    module, n = owner.module, backprop.shape[0]
    batched = tuple(isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n for a in call.args)
    own = {local: p.detach() for local, p in owner.params.items()}

    def sample_vjp(*sample_args_and_grad):
        *sample_args, grad_output = sample_args_and_grad
        args = tuple(a.unsqueeze(0) if b else a for a, b in zip(sample_args, batched))

        def run(params):
            return torch.func.functional_call(module, params, args, call.kwargs)

        _, vjp = torch.func.vjp(run, own)
        return vjp(grad_output.unsqueeze(0))[0]

    in_dims = tuple(0 if b else None for b in batched) + (0,)
    grads = torch.func.vmap(sample_vjp, in_dims=in_dims, randomness="same")(*call.args, backprop)
    for local, grad in grads.items():
        yield owner.params[local], grad, False
