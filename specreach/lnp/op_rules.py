"""Per-sample gradients of parameters used directly in torch functions, outside a layer rule.

A root-owned ``pos_embed`` added to the tokens, a ``cls_token`` expanded over the batch, a head
tied to the embedding (``h @ wte.weight.T``), a decoder ``F.linear(h, enc.weight.t())``: each
use is one torch function whose per-sample gradient has a closed form in that function's inputs
and its output gradient G (batch-first):

- ``add``/``sub``/``mul`` with a parameter broadcast over the batch, and ``expand``: G (times the
  other operand, for ``mul``; where the condition selects it, for ``torch.where``) summed over the
  broadcast dims, per sample; the same for a tensor
  computed from parameters without batch data (Hugging Face's position embeddings
  ``wpe(position_ids)`` of shape (1, T, d)), whose per-sample cotangents are then pulled back to
  the parameters through the batch-free graph that made it;
- ``F.linear(x, W, b)`` and ``x @ W`` with W the parameter or its transpose: Σ_t g_t x_tᵀ;
- ``F.embedding``: G's rows scattered to the tokens' rows (``padding_idx`` rows get none).

When every use of a parameter has a rule, these replace a per-sample VJP that would re-run the
whole enclosing call (often the model) for every probe. Anything else falls back to that VJP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from specreach.lnp.forward_record import OpUse, is_batched

_ADD = {torch.Tensor.add, torch.add}
_SUB = {torch.Tensor.sub, torch.sub}
_MUL = {torch.Tensor.mul, torch.mul}
_EXPAND = {torch.Tensor.expand, torch.Tensor.expand_as}
_MATMUL = {torch.Tensor.matmul, torch.matmul}


@dataclass(frozen=True)
class OpRule:
    """One use of one parameter and how to turn the use's output gradient into per-sample gradients."""

    kind: str  # "broadcast", "linear", "matmul", "embedding"
    use: OpUse
    parameter: Tensor = field(repr=False)
    factor: float = 1.0  # broadcast: the sign / alpha of the operand
    other: Any = field(default=None, repr=False)  # mul: the other operand; linear/matmul: the input; embedding: tokens
    transposed: bool = False  # the function received the parameter's transpose
    bias: bool = False  # linear: the parameter is the bias
    derived: Tensor | None = field(default=None, repr=False)  # broadcast of a tensor computed from the parameter

    @property
    def name(self) -> str:
        func = getattr(self.use.func, "__name__", str(self.use.func))
        return f"{func} in '{self.use.call.name}'" if self.use.call is not None else func

    def per_sample(self, backprop: Tensor, n: int) -> Tensor:
        """Per-sample gradients of the parameter from this use, shape (n, *parameter.shape)."""
        if self.kind == "broadcast":
            grad = backprop * self.factor if self.other is None else backprop * self.other
            if self.derived is None:
                return _sum_to(grad, self.parameter.shape, n)
            # Per-sample cotangents of the derived tensor, pulled back to the parameter through the
            # (batch-free) graph that computed it, all samples in one batched backward.
            cotangents = _sum_to(grad, self.derived.shape, n)
            (pulled,) = torch.autograd.grad(self.derived, self.parameter, cotangents, retain_graph=True,
                                            allow_unused=True, is_grads_batched=True)
            return torch.zeros((n, *self.parameter.shape), dtype=grad.dtype, device=grad.device) if pulled is None else pulled
        if self.kind == "embedding":
            return _embedding(self, backprop, n)
        inputs = self.other.reshape(n, -1, self.other.shape[-1]).to(backprop.dtype)
        g = backprop.reshape(n, -1, backprop.shape[-1])
        if self.bias:
            return g.sum(dim=1)
        if self.kind == "linear":  # out = x Wᵀ: ∂/∂W = Σ_t g_t x_tᵀ
            grad = torch.bmm(g.transpose(1, 2), inputs)
        else:  # matmul, out = x W: ∂/∂W = Σ_t x_t g_tᵀ
            grad = torch.bmm(inputs.transpose(1, 2), g)
        return grad.transpose(1, 2) if self.transposed else grad


def classify(use: OpUse, pid: int, parameter: Tensor, n: int) -> "OpRule | str | None":
    """The rule for this use of the parameter; ``"view"`` for a transpose (its result is tracked and
    its uses are classified instead); None when there is no rule (or the use is not per-sample)."""
    operands = [(position, transposed, derived) for p, position, transposed, derived in use.operands if p == pid]
    if len(operands) != 1 or parameter.is_complex():  # the closed forms below are for real parameters
        return None
    if not _carries_tensors(use.output):
        return "view"  # metadata, a shape: no gradient flows
    if not use.differentiable:
        return None
    (position, transposed, derived), func = operands[0], use.func
    if use.is_transpose or use.derives:
        return "view"  # a transpose or a batch-free result: tracked, and its own uses are classified
    if not use.batch_first or not is_batched(use.output, n):
        return None
    args, kwargs = use.args, use.kwargs
    if func in _ADD | _SUB | _MUL | _EXPAND:
        operand = parameter if derived is None else derived
        if transposed or position not in (("arg", 0), ("arg", 1)) or not _broadcast_over_batch(operand, use.output):
            return None
        if func in _EXPAND:
            return OpRule("broadcast", use, parameter, derived=derived) if position == ("arg", 0) else None
        other = args[1 - position[1]] if len(args) == 2 else None
        if func in _MUL:
            if isinstance(other, (int, float)) and not isinstance(other, bool):
                return OpRule("broadcast", use, parameter, factor=float(other), derived=derived)
            if isinstance(other, Tensor):
                return OpRule("broadcast", use, parameter, other=other, derived=derived)
            return None
        alpha = kwargs.get("alpha", 1)
        sign = -1.0 if (func in _SUB and position == ("arg", 1)) else 1.0
        return OpRule("broadcast", use, parameter, factor=sign * (alpha if position == ("arg", 1) else 1),
                      derived=derived)
    if func is torch.where and position in (("arg", 1), ("arg", 2)) and isinstance(args[0], Tensor):
        # where(c, a, b): a's gradient is G where c holds, b's where it does not (T5's masked position bias)
        operand = parameter if derived is None else derived
        if transposed or not _broadcast_over_batch(operand, use.output):
            return None
        chosen = args[0] if position == ("arg", 1) else ~args[0]
        return OpRule("broadcast", use, parameter, other=chosen, derived=derived)
    if func is F.linear and derived is not None and not transposed and position in (("arg", 2), ("kw", "bias")):
        # a bias computed from parameters (BEiT's cat(q_bias, zeros, v_bias)) is a broadcast add
        return OpRule("broadcast", use, parameter, derived=derived)
    if derived is not None:
        return None  # only broadcasts of derived tensors have a rule
    if func is F.linear:
        inputs = args[0] if args else kwargs.get("input")
        if not isinstance(inputs, Tensor) or not use.splits(inputs) or inputs.dim() < 2:
            return None
        if position in (("arg", 1), ("kw", "weight")):
            return OpRule("linear", use, parameter, other=inputs, transposed=transposed)
        if position in (("arg", 2), ("kw", "bias")) and not transposed:
            return OpRule("linear", use, parameter, other=inputs, bias=True)
        return None
    if func in _MATMUL and position == ("arg", 1) and parameter.dim() == 2:
        inputs = args[0]
        if use.splits(inputs) and inputs.dim() >= 2:
            # x @ Wᵀ is F.linear(x, W); x @ W is a matmul with the parameter itself.
            return OpRule("linear" if transposed else "matmul", use, parameter, other=inputs)
        return None
    if func is F.embedding and position in (("arg", 1), ("kw", "weight")) and not transposed:
        tokens = args[0] if args else kwargs.get("input")
        options = dict(zip(("padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"), args[2:]))
        options.update(kwargs)
        if options.get("max_norm") is not None or options.get("scale_grad_by_freq") or not use.splits(tokens):
            return None
        return OpRule("embedding", use, parameter, other=(tokens, options.get("padding_idx")))
    return None


def _carries_tensors(output: Any) -> bool:
    if isinstance(output, Tensor):
        return True
    return isinstance(output, (tuple, list)) and any(isinstance(item, Tensor) for item in output)


def _broadcast_over_batch(parameter: Tensor, output: Tensor) -> bool:
    """The parameter, right-aligned to the output, has size 1 (or no dim) at the batch dim."""
    offset = output.dim() - parameter.dim()
    return offset > 0 or (offset == 0 and parameter.shape[0] == 1)


def _sum_to(grad: Tensor, shape: torch.Size, n: int) -> Tensor:
    """Per sample, sum ``grad`` (n, ...) over the dims the parameter was broadcast along."""
    aligned = (1,) * (grad.dim() - len(shape)) + tuple(shape)
    dims = [d for d in range(1, grad.dim()) if aligned[d] == 1 and grad.shape[d] != 1]
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad.reshape(n, *shape)


def _embedding(rule: OpRule, backprop: Tensor, n: int) -> Tensor:
    tokens, padding_idx = rule.other
    rows, width = rule.parameter.shape
    g = backprop.reshape(n, -1, width)
    tokens = tokens.reshape(n, -1)
    if padding_idx is not None:
        g = g * (tokens != (padding_idx % rows)).unsqueeze(-1).to(g.dtype)
    grad = torch.zeros(n, rows, width, dtype=g.dtype, device=g.device)
    return grad.scatter_add_(1, tokens.unsqueeze(-1).expand(-1, -1, width), g)
