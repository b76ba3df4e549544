"""Where the samples are in each tensor of a recorded forward.

The fast path splits a tensor by sample along its first dimension. The tensor's size alone cannot
tell whether that dimension holds the samples: a mixture of experts routes the tokens of a batch of
n samples into a tensor of k tokens, and when k happens to equal n, splitting it "by sample" gives
one token to each sample. So the samples are followed through the forward as a *layout*
``(dim, rows)``: along ``dim`` the tensor holds the n samples in order, ``rows`` entries each (1 for a
batch-first tensor; more for the batch flattened into rows, as Swin's windows and OPT's feed-forward
do). The model's inputs hold the samples first by contract, and :func:`layout` says where a
function's result holds them, from where its operands do:

- reshapes, permutations, indexing, ``unbind``/``select``, concatenation, stacking, splits,
  reductions, matrix products and ``einsum`` move the samples' dim by their rules; where a function
  selects, reorders or contracts along it (indexing it with a mask, a gather, a sort, a reduction over
  it), the result holds no samples' dim;
- every other function is taken to compute elementwise with broadcasting (right-aligned), as
  layers, activations and attention do: every batch-derived operand's samples must land on the same
  dim of the result, with as many rows each.

A tensor computed from the batch that does not hold the samples first, one row each, is never
split by sample: the calls that receive it are not re-run per sample, and the parameters they use
take the VJP of an enclosing call that is per-sample. (One with the samples first in several rows
each feeds layer rules that sum each sample's rows.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

#: (dim, rows): along ``dim`` the n samples in order, ``rows`` entries each.
Layout = tuple[int, int]
LayoutOf = Callable[[Any], "Layout | None"]


@dataclass(frozen=True)
class _Call:
    """One function call as a rule sees it."""

    func: Any
    args: tuple
    kwargs: dict
    output: Tensor
    n: int
    layout_of: LayoutOf  # where a tensor holds the samples (None: nowhere)
    is_batch_data: Callable[[Any], bool]  # computed from the batch

    @property
    def source(self) -> Any:
        return self.args[0] if self.args else None

    def source_layout(self) -> Layout | None:
        return self.layout_of(self.source) if isinstance(self.source, Tensor) else None

    def at(self, position: int, name: str, default: Any = None) -> Any:
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[position] if len(self.args) > position else default


def _tensors(args: tuple, kwargs: dict):
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, (tuple, list)):
            yield from (item for item in value if isinstance(item, Tensor))


def _dims(dims: Any, ndim: int) -> list[int] | None:
    if dims is None:
        return None
    return [d % max(ndim, 1) for d in ([dims] if isinstance(dims, int) else dims)]


def _reshaped(call: _Call) -> Layout | None:
    """A reshape (row-major order, a copy or a view alike) keeps each sample's elements together: the
    samples are on the result's dim e whose leading dims hold as many elements as the source's before
    the samples' dim, and whose size is a multiple of n (each sample taking size / n entries)."""
    layout = call.source_layout()
    if layout is None:
        return None
    d, _ = layout
    before = math.prod(call.source.shape[:d])
    for e, size in enumerate(call.output.shape):
        if math.prod(call.output.shape[:e]) == before and size % call.n == 0 and (size > 1 or call.n == 1):
            return e, size // call.n
        if math.prod(call.output.shape[:e]) > before:
            break
    return None


def _broadcast(call: _Call) -> Layout | None:
    """expand/repeat/tile: new dims in front; the samples' dim must not be repeated."""
    layout = call.source_layout()
    if layout is None:
        return None
    d, rows = layout
    e = d + call.output.dim() - call.source.dim()
    return (e, rows) if call.output.shape[e] == call.source.shape[d] else None


def _rearranged(call: _Call) -> Layout | None:
    """permute/transpose/movedim/t/mT: done again on a meta tensor whose sizes name the dims."""
    layout = call.source_layout()
    if layout is None:
        return None
    d, rows = layout
    named = torch.empty(tuple(range(1, call.source.dim() + 1)), device="meta")
    moved = call.func(named, *call.args[1:], **call.kwargs)
    return list(moved.shape).index(d + 1), rows


def _removes(call: _Call) -> Layout | None:
    """unbind/select: the dim is removed, and must not be the samples'."""
    layout = call.source_layout()
    if layout is None:
        return None
    d, rows = layout
    dim = call.at(1, "dim", 0) % call.source.dim()
    return None if dim == d else (d - (dim < d), rows)


def _along(position: int, name: str = "dim", default: Any = 0) -> Callable[[_Call], Layout | None]:
    """A function along some dims (a split, a cumulative sum, a gather, a sort, a softmax) keeps the samples'
    dim unless it works along it. Every batch-derived operand as wide as the result must hold the samples
    alike (or be one entry there): a gather from a constant table by batch-derived indices takes their rows."""
    def rule(call: _Call) -> Layout | None:
        found = set()
        for value in _tensors(call.args, call.kwargs):
            if not call.is_batch_data(value) or value.dim() != call.source.dim():
                continue
            operand = call.layout_of(value)
            if operand is not None:
                found.add(operand)
            elif value.shape[0] != 1:
                return None
        dims = _dims(call.at(position, name, default), call.source.dim())
        if len(found) != 1 or dims is None:
            return None
        layout = found.pop()
        return None if layout[0] in dims else layout
    return rule


def _reduced(call: _Call) -> Layout | None:
    """A reduction keeps the samples' dim unless it reduces it (a full reduction does)."""
    layout = call.source_layout()
    dims = _dims(call.at(1, "dim"), call.source.dim()) if layout is not None else None
    if layout is None or dims is None or layout[0] in dims:
        return None
    d, rows = layout
    return layout if call.at(2, "keepdim", False) else (d - sum(dim < d for dim in dims), rows)


def _joined(stack: bool) -> Callable[[_Call], Layout | None]:
    """cat/stack of tensors that all hold the samples alike, along another dim."""
    def rule(call: _Call) -> Layout | None:
        tensors = [t for t in call.at(0, "tensors", ()) if isinstance(t, Tensor) and t.numel() > 0]
        layouts = {call.layout_of(t) for t in tensors if call.is_batch_data(t)}
        if len(layouts) != 1 or None in layouts:
            return None
        found = layouts.pop()
        assert found is not None  # excluded above
        (d, rows), ndim = found, max(t.dim() for t in tensors)
        dim = call.at(1, "dim", 0) % (ndim + stack)
        if stack:
            return d + (dim <= d), rows
        return None if dim == d else (d, rows)
    return rule


def _indexed(call: _Call) -> Layout | None:
    """Where the samples are in ``x[index]``."""
    layout = call.source_layout()
    if layout is None:
        return None
    e, _ = _index_walk(call.source, call.args[1] if len(call.args) > 1 else (), layout, call.n)
    return None if e is None else (e, layout[1])


def _assigned(call: _Call) -> Layout | None:
    """``x[index] = value`` keeps x's samples where they are when the index takes their dim whole and the
    value, if computed from the batch, holds its samples alike on that dim of ``x[index]`` (or has fewer
    dims than reach it: the same for every sample)."""
    layout = call.source_layout()
    if layout is None or len(call.args) < 3:
        return None
    e, rank = _index_walk(call.source, call.args[1], layout, call.n)
    value = call.args[2]
    if e is None:
        return None
    if not isinstance(value, Tensor) or not call.is_batch_data(value) or value.dim() == 0:
        return layout
    value_layout = call.layout_of(value)
    if value_layout is None:
        return layout if value.dim() < rank - e else None
    return layout if (value_layout[0] + rank - value.dim(), value_layout[1]) == (e, layout[1]) else None


def _index_walk(source: Tensor, index: Any, layout: Layout, n: int) -> tuple[int | None, int]:
    """Basic indexing moves the samples' dim by the ints, slices and Nones before it, and must take it whole
    (``:``); advanced indices (tensors, lists, masks) may follow it in one block, or select sample i at row
    i. Returns the samples' dim in the result (None: lost) and the result's rank."""
    d, rows = layout
    index = list(index) if isinstance(index, tuple) else [index]

    def rank(item: Any) -> int:  # how many source dims an index consumes
        if item is None:
            return 0
        if isinstance(item, Tensor) and item.dtype == torch.bool:
            return item.dim()
        return 1

    if any(item is Ellipsis for item in index):
        at = next(i for i, item in enumerate(index) if item is Ellipsis)
        fill = source.dim() - sum(rank(item) for item in index if item is not Ellipsis)
        index[at:at + 1] = [slice(None)] * fill
    index += [slice(None)] * (source.dim() - sum(rank(item) for item in index))
    advanced = [i for i, item in enumerate(index) if not isinstance(item, (slice, int)) and item is not None]
    contiguous = not advanced or advanced == list(range(advanced[0], advanced[-1] + 1))
    advanced_rank = max((item.dim() if isinstance(item, Tensor) and item.dtype != torch.bool else 1
                         for item in (index[i] for i in advanced)), default=0)
    result_rank = sum(1 for item in index if item is None or isinstance(item, slice)) + advanced_rank
    found, out, consumed = None, 0, 0
    for position, item in enumerate(index):
        if item is None:
            out += 1
            continue
        if consumed == d and found is None:
            whole = isinstance(item, slice) and item == slice(None) and all(a > position for a in advanced)
            each_sample = (rows == 1 and advanced and position == advanced[0]
                           and _selects_each_sample(item, n, advanced_rank))
            found = out if contiguous and (whole or each_sample) else -1
        if isinstance(item, int):
            consumed += 1
            continue
        consumed += rank(item)
        if position not in advanced[1:]:
            out += 1
    return (found if found is not None and found >= 0 else None), result_rank


def _selects_each_sample(item: Any, n: int, rank: int) -> bool:
    """An index tensor that takes sample i at row i: ``arange(n)`` along its first of ``rank`` dims (as
    ``mask[batch_idx, kv_idx]`` with ``batch_idx = arange(n)[:, None, None, None]`` in attention masks)."""
    if not isinstance(item, Tensor) or item.dtype in (torch.bool, torch.uint8) or item.is_floating_point():
        return False
    if item.dim() != rank or item.shape[0] != n:
        return False
    identity = torch.arange(n, device=item.device).reshape(n, *([1] * (item.dim() - 1)))
    return bool(torch.equal(item, identity.expand_as(item)))


def _product(left: int, names: tuple[str, str, str]) -> Callable[[_Call], Layout | None]:
    """matmul and its kin: a batch-derived operand's samples must be on one of its batch dims (or, on the
    left, its rows), all landing on one dim of the result; a contracted dim mixes the samples, and the
    right operand's columns would go into every sample's result."""
    def rule(call: _Call) -> Layout | None:
        operands = [call.at(left + i, name) for i, name in enumerate(names[1:])]
        operands = [a for a in operands if isinstance(a, Tensor)]
        if len(operands) != 2 or min(a.dim() for a in operands) < 2:
            return None
        a, b = operands
        found = set()
        for value, contracted, columns in ((a, a.dim() - 1, None), (b, b.dim() - 2, b.dim() - 1)):
            if not call.is_batch_data(value):
                continue
            layout = call.layout_of(value)
            if layout is None or layout[0] in (contracted, columns):
                return None
            found.add((layout[0] + call.output.dim() - value.dim(), layout[1]))
        added = call.at(0, names[0]) if left == 1 else None  # addmm/baddbmm: input + a @ b, broadcast elementwise
        if isinstance(added, Tensor) and call.is_batch_data(added) and added.dim() > 0:
            layout = call.layout_of(added)
            if layout is None:
                return None
            found.add((layout[0] + call.output.dim() - added.dim(), layout[1]))
        return found.pop() if len(found) == 1 else None
    return rule


def _einsum(call: _Call) -> Layout | None:
    """The samples' index of every batch-derived operand must be the same letter, kept in the output."""
    equation = call.source
    operands = call.args[1:]
    if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
        operands = tuple(operands[0])
    if not isinstance(equation, str) or "..." in equation or "->" not in equation:
        return None
    inputs, output = equation.replace(" ", "").split("->")
    found = set()
    for term, operand in zip(inputs.split(","), operands):
        if isinstance(operand, Tensor) and call.is_batch_data(operand):
            layout = call.layout_of(operand)
            if layout is None or len(term) != operand.dim():
                return None
            found.add((term[layout[0]], layout[1]))
    if len(found) != 1:
        return None
    letter, rows = found.pop()
    return (output.index(letter), rows) if letter in output else None


def _leading(call: _Call) -> Layout | None:
    """F.embedding and F.one_hot keep the index tensor's dims first and add their own last."""
    index = call.at(0, "input")
    return call.layout_of(index) if isinstance(index, Tensor) else None


def _nowhere(call: _Call) -> Layout | None:
    return None


_T = torch.Tensor
_RULES: dict[Any, Callable[[_Call], Layout | None]] = {
    _T.__getitem__: _indexed,
    _T.__setitem__: _assigned,
    **dict.fromkeys((torch.reshape, _T.reshape, _T.view, _T.view_as, _T.reshape_as, torch.flatten, _T.flatten,
                     _T.unflatten, torch.unflatten, torch.squeeze, _T.squeeze, torch.unsqueeze, _T.unsqueeze),
                    _reshaped),
    **dict.fromkeys((_T.expand, _T.expand_as, torch.broadcast_to, _T.broadcast_to, _T.repeat, torch.tile, _T.tile),
                    _broadcast),
    **dict.fromkeys((torch.permute, _T.permute, torch.transpose, _T.transpose, torch.swapaxes, _T.swapaxes,
                     torch.swapdims, _T.swapdims, torch.movedim, _T.movedim, torch.moveaxis, _T.moveaxis, torch.t,
                     _T.t, _T.T.__get__, _T.mT.__get__, _T.mH.__get__, _T.H.__get__,  # type: ignore[attr-defined]
                     torch.adjoint, _T.adjoint),
                    _rearranged),
    **dict.fromkeys((torch.unbind, _T.unbind, torch.select, _T.select), _removes),
    **dict.fromkeys((torch.split, _T.split, torch.chunk, _T.chunk, torch.tensor_split, _T.tensor_split,
                     torch.split_with_sizes, _T.split_with_sizes), _along(2)),
    **dict.fromkeys((torch.cumsum, _T.cumsum, torch.cumprod, _T.cumprod, torch.cummax, _T.cummax, torch.cummin,
                     _T.cummin, torch.logcumsumexp, _T.logcumsumexp, torch.narrow, _T.narrow, torch.index_select,
                     _T.index_select, torch.gather, _T.gather, torch.take_along_dim, _T.take_along_dim, torch.scatter,
                     _T.scatter, _T.scatter_, torch.scatter_add, _T.scatter_add, _T.scatter_add_, torch.scatter_reduce,
                     _T.scatter_reduce, _T.scatter_reduce_, torch.index_add, _T.index_add, _T.index_add_,
                     torch.index_copy, _T.index_copy, _T.index_copy_, torch.index_fill, _T.index_fill, _T.index_fill_,
                     _T.unfold, torch.diff, _T.diff, torch.softmax, _T.softmax, F.softmax, torch.log_softmax,
                     _T.log_softmax, F.log_softmax), _along(1)),
    **dict.fromkeys((torch.sort, _T.sort, torch.argsort, _T.argsort, torch.topk, _T.topk, torch.kthvalue, _T.kthvalue),
                    _along(1, default=-1)),
    **dict.fromkeys((torch.roll, _T.roll), _along(2, name="dims", default=None)),
    **dict.fromkeys((torch.flip, _T.flip), _along(1, name="dims", default=None)),
    **dict.fromkeys((torch.cat, torch.concat, torch.concatenate), _joined(stack=False)),
    torch.stack: _joined(stack=True),
    **dict.fromkeys((torch.matmul, _T.matmul, _T.__matmul__), _product(0, ("", "input", "other"))),
    **dict.fromkeys((torch.mm, _T.mm), _product(0, ("", "input", "mat2"))),
    **dict.fromkeys((torch.bmm, _T.bmm), _product(0, ("", "input", "mat2"))),
    **dict.fromkeys((torch.addmm, _T.addmm), _product(1, ("input", "mat1", "mat2"))),
    **dict.fromkeys((torch.baddbmm, _T.baddbmm), _product(1, ("input", "batch1", "batch2"))),
    torch.einsum: _einsum,
    **dict.fromkeys((F.embedding, F.one_hot), _leading),
    **dict.fromkeys((torch.sum, _T.sum, torch.mean, _T.mean, torch.prod, _T.prod, torch.amax, _T.amax, torch.amin,
                     _T.amin, torch.max, _T.max, torch.min, _T.min, torch.std, _T.std, torch.var, _T.var,
                     torch.logsumexp, _T.logsumexp, torch.norm, _T.norm, torch.linalg.vector_norm, torch.argmax,
                     _T.argmax, torch.argmin, _T.argmin, torch.any, _T.any, torch.all, _T.all, torch.median, _T.median,
                     torch.nansum, _T.nansum, torch.nanmean, _T.nanmean, torch.count_nonzero, _T.count_nonzero,
                     torch.std_mean, torch.var_mean, torch.mode, _T.mode), _reduced),
    **dict.fromkeys((_T.__rmatmul__, torch.masked_select, _T.masked_select, torch.take, _T.take, torch.nonzero,
                     _T.nonzero, torch.argwhere, torch.repeat_interleave, _T.repeat_interleave, torch.unique,
                     _T.unique, torch.unique_consecutive, torch.ravel, _T.ravel, torch.as_strided, _T.as_strided,
                     torch.diag, torch.kron, torch.outer, torch.cartesian_prod, torch.combinations, torch.block_diag,
                     torch.cdist, _T.index_put_, _T.index_put, torch.index_put, _T.masked_scatter_, _T.masked_scatter,
                     torch.masked_scatter), _nowhere),
}


def layout(func: Any, args: tuple, kwargs: dict, output: Tensor, n: int, layout_of: LayoutOf,
           is_batch_data: Callable[[Any], bool]) -> Layout | None:
    """Where ``output`` (a result of ``func`` on batch-derived operands, or the operand an in-place ``func``
    changed) holds the n samples, or None. ``layout_of(t)`` says where an operand does;
    ``is_batch_data(t)`` whether it was computed from the batch."""
    rule = _RULES.get(func)
    if rule is _reduced and len(args) > 1 and isinstance(args[1], Tensor):
        rule = None  # torch.max(a, b) and its kin: elementwise
    if rule is not None:
        try:
            found = rule(_Call(func, args, kwargs, output, n, layout_of, is_batch_data))
        except (TypeError, ValueError, IndexError, RuntimeError):  # an unusual signature: judged unsure
            return None
        return found if found is not None and 0 <= found[0] < output.dim() else None
    # Elementwise with broadcasting (right-aligned): every batch-derived operand's samples land on one dim.
    found_layouts = set()
    for value in _tensors(args, kwargs):
        if not is_batch_data(value) or value.dim() == 0:
            continue
        operand = layout_of(value)
        if operand is None:
            if value.dim() >= output.dim():
                return None  # batch-derived, its samples nowhere, as wide as the result: its rows are not theirs
            continue  # fewer dims: the same for every sample (a batch statistic couples values, not rows)
        found_layouts.add((operand[0] + output.dim() - value.dim(), operand[1]))
    if len(found_layouts) != 1:
        return None
    found = found_layouts.pop()
    return found if 0 <= found[0] < output.dim() else None
