"""A record of one forward pass: every module call, nested as they ran, and where each
trainable parameter was used.

Per-sample norms are computed from module hooks, which see a parameter only through the
module that owns it. A parameter can also be used where those hooks cannot see it: in a
tied head (``h @ wte.weight.T``), through a parametrization, in a submodule called with
``.forward()`` (no hooks run), or in a forward hook. :class:`ForwardRecorder` watches every
torch function call of the forward (a ``TorchFunctionMode``) and notes, for each trainable
parameter passed to one, the innermost module call running at that moment. It also keeps each such
function call (an :class:`OpUse`), so that simple uses outside any layer rule can get a rule of
their own (:mod:`specreach.lnp.op_rules`). The coverage plan (:mod:`specreach.lnp.coverage`)
then decides from the record which rule sees every use.

Our hooks are prepended, so a call's recorded output is the module's own result even when a
user's forward hook replaces it afterwards.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils import hooks as torch_hooks

from specreach.lnp.alignment import Layout, layout


@dataclass(eq=False)
class ModuleCall:
    """One call of one module during the recorded forward."""

    path: str  # the module's name in the model ('' for the model itself)
    module: nn.Module = field(repr=False)
    parent: "ModuleCall | None" = field(repr=False)
    start: int  # position in the forward's sequence of call starts and ends
    end: int = -1
    args: tuple = field(default=(), repr=False)
    kwargs: dict = field(default_factory=dict, repr=False)
    output: Any = field(default=None, repr=False)
    version: int = 0  # output._version when recorded, to catch later in-place changes
    uses: set[int] = field(default_factory=set)  # ids of trainable parameters used directly in this call
    #: its first input is the batch flattened into rows, sample by sample (see ``flattens_batch``)
    flattened_input: bool = False
    #: False when a tensor of the call has the batch size first but is not split by sample there
    #: (a sequence-first layer whose sequence length equals the batch size; see PerSampleNormTape.record)
    batch_first: bool = True
    #: an input computed from the batch does not hold the samples along its first dim (the tokens of
    #: every bag flattened into one list, with offsets; the batch flattened into rows; tokens routed
    #: to an expert): re-running the call on one sample's slices would not be that sample's computation
    unsplit_batch_input: bool = False
    #: ids of the inputs that hold the samples along their first dim (see :mod:`specreach.lnp.alignment`)
    split: frozenset[int] = frozenset()

    @property
    def name(self) -> str:
        return self.path or f"<{type(self.module).__name__} model>"

    def ancestors(self) -> Iterable["ModuleCall"]:
        """This call and the calls enclosing it, innermost first."""
        call: ModuleCall | None = self
        while call is not None:
            yield call
            call = call.parent

    def encloses(self, other: "ModuleCall") -> bool:
        return self.start <= other.start and other.end <= self.end

    def splits(self, value: Any) -> bool:
        """Whether ``value``, an input of this call, holds the samples along its first dim."""
        return id(value) in self.split

    def is_per_sample(self, n: int) -> bool:
        """Batch-first tensor output computed from batch-first tensor inputs.

        Only then can the output's gradient be split by sample. A call that computes from
        parameters alone (a parametrization, a position table) is not per-sample.
        """
        return self.batch_first and not self.unsplit_batch_input and is_batched(self.output, n) and bool(self.split)

    def flattens_batch(self, n: int) -> bool:
        """The input is the batch flattened into rows sample by sample (``x.reshape(-1, d)`` of a
        batch-first tensor, as Swin's windows and OPT's feed-forward), so that sample i owns the
        i-th n-th of the rows, and the output has the same rows."""
        first = self.args[0] if self.args else None
        return (self.flattened_input and isinstance(first, Tensor) and isinstance(self.output, Tensor)
                and self.output.dim() > 0 and self.output.shape[0] == first.shape[0])


@dataclass(eq=False)
class OpUse:
    """One torch function that received a trainable parameter (or a transpose of one)."""

    func: Any
    args: tuple = field(repr=False)
    kwargs: dict = field(repr=False)
    output: Any = field(repr=False)
    call: ModuleCall | None = field(repr=False)  # the innermost module call running
    tick: int  # when it ran, on the clock of module call starts and ends
    #: (parameter id, ("arg", i) / ("kw", name), transposed, derived): the operand is the parameter, its
    #: 2-D transpose, or (``derived``) a tensor computed from parameters without batch data
    operands: list[tuple[int, tuple, bool, Tensor | None]] = field(repr=False)
    differentiable: bool  # grad mode on and the output in the graph (not inside a custom Function's forward)
    is_transpose: bool  # a 2-D transpose: its result stands for the parameter (transposed) in later uses
    derives: bool  # its output is computed from parameters without batch data (e.g. position embeddings)
    version: int = 0
    batch_first: bool = True  # as ModuleCall.batch_first, for the output
    split: frozenset[int] = frozenset()  # as ModuleCall.split: ids of operands holding the samples first

    def splits(self, value: Any) -> bool:
        return id(value) in self.split


def _getter(name: str) -> Any:
    """The function a ``TorchFunctionMode`` sees when a tensor property is read."""
    return getattr(torch.Tensor, name).__get__


#: 2-D transposes; a parameter's transpose is tracked so that ``h @ W.T`` is seen as a use of W.
_TRANSPOSES = (_getter("T"), _getter("mT"), torch.Tensor.t, torch.t)
_TRANSPOSE_DIMS = (torch.Tensor.transpose, torch.transpose)


def _is_transpose(func, args: tuple, kwargs: dict) -> bool:
    if not args or not isinstance(args[0], Tensor) or args[0].dim() != 2:
        return False
    if func in _TRANSPOSES:
        return True
    if func in _TRANSPOSE_DIMS:
        dims = [*args[1:], *kwargs.values()]
        return len(dims) == 2 and {d % 2 for d in dims} == {0, 1}
    return False


def _operands(args: tuple, kwargs: dict):
    for i, value in enumerate(args):
        if isinstance(value, (list, tuple)):
            for j, item in enumerate(value):
                yield ("arg", i, j), item
        else:
            yield ("arg", i), value
    for key, value in kwargs.items():
        yield ("kw", key), value


def _batch_size_of(args: tuple) -> int | None:
    for value in args:
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    return None


def is_batched(value: Any, n: int | None) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n


#: Reading a tensor's metadata (or ``.data``, outside autograd) is not a use: no gradient flows.
_METADATA = tuple(
    [_getter(name) for name in (
        "device", "dtype", "shape", "requires_grad", "ndim", "is_cuda", "layout", "is_sparse", "is_quantized",
        "is_meta", "data", "grad", "grad_fn", "is_leaf")]
    + [getattr(torch.Tensor, name) for name in (
        "size", "dim", "numel", "nelement", "element_size", "is_floating_point", "is_complex", "is_contiguous",
        "stride", "data_ptr", "storage_offset", "get_device")]
)


class _ParameterUses(TorchFunctionMode):
    """Notes each trainable parameter that a torch function receives, in the running call."""

    def __init__(self, recorder: "ForwardRecorder"):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA:
            return func(*args, **kwargs)
        recorder = self.recorder
        operands, batched = [], False
        for position, value in _operands(args, kwargs):
            key = id(value)
            if key in recorder.parameter_ids:
                operands.append((key, position, False, None))
            elif key in recorder.transposes:
                pid, transposed = recorder.transposes[key]
                operands.append((pid, position, transposed, None))
            elif key in recorder.derived:
                derived, pids = recorder.derived[key]
                operands.extend((pid, position, False, derived) for pid in sorted(pids))
            elif recorder.is_batch_data(value):
                batched = True
        if func is F.embedding and operands and _renorms(args, kwargs):
            raise ValueError(
                "F.embedding(..., max_norm=...) on a trainable parameter rescales the weight rows in place "
                "during the forward, so measuring would change the model; renormalize outside the forward, "
                "or call it with max_norm=None"
            )
        output = func(*args, **kwargs)
        if batched and func not in _FACTORIES:  # computed from the batch: so is whatever it returns (or changes in place)
            recorder.note_layouts(func, args, kwargs, output)
            recorder.note_batch_data(output)
        if operands:
            recorder.note_op(func, args, kwargs, output, operands, batched)
        return output


#: Functions that take a tensor for its shape, dtype and device only: their results are constants.
_FACTORIES = {torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_full, torch.Tensor.new_empty,
              torch.Tensor.new_tensor, torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
              torch.rand_like, torch.randn_like, torch.randint_like}


_EXPANSIONS = {torch.Tensor.expand, torch.Tensor.expand_as, torch.broadcast_to, torch.Tensor.broadcast_to,
               torch.Tensor.repeat, torch.tile, torch.Tensor.tile}


def _expands_over_batch(func, args: tuple, output: Any) -> bool:
    """An expansion whose first dim was added or broadcast from 1 (``cls_token.expand(n, -1, -1)``)."""
    source = args[0] if args else None
    return (func in _EXPANSIONS and isinstance(source, Tensor) and isinstance(output, Tensor)
            and (source.dim() < output.dim() or source.shape[0] == 1))


def _in_place(func) -> bool:
    """A function that changes its first operand in place (``x.add_(y)``, ``x[i] = y``, ``x += y``)."""
    name = getattr(func, "__name__", "")
    return (name.endswith("_") and not name.startswith("__")) or name in _IN_PLACE_DUNDERS


_IN_PLACE_DUNDERS = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
                     "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__"}


def _renorms(args: tuple, kwargs: dict) -> bool:
    """Whether an ``F.embedding`` call renormalizes its weight (``max_norm``, its fourth argument)."""
    max_norm = kwargs.get("max_norm", args[3] if len(args) > 3 else None)
    return max_norm is not None


class ForwardRecorder:
    """Context manager around one forward pass of ``model``: records :class:`ModuleCall` s.

    ``calls`` lists every call in the order the calls started; ``root`` is the model's own call.
    Uses outside any call of the model (only the measurement's own code runs there) are ignored.
    """

    def __init__(self, model: nn.Module, parameters: Mapping[str, nn.Parameter]):
        global_hooks = [*torch.nn.modules.module._global_forward_hooks.values()]
        if global_hooks:
            raise ValueError(
                "a global module forward hook is registered (torch.nn.modules.module.register_module_forward_hook); "
                "it may replace any module's output, which per-sample norms cannot see. Remove it while measuring, "
                "or use estimator='entk'."
            )
        self.model = model
        self.parameter_ids = {id(p) for p in parameters.values()}
        self.calls: list[ModuleCall] = []
        self.op_uses: list[OpUse] = []
        #: id of a parameter's 2-D transpose made during the forward -> (parameter id, transposed)
        self.transposes: dict[int, tuple[int, bool]] = {}
        #: id of a tensor computed from parameters without batch data -> (tensor, parameter ids)
        self.derived: dict[int, tuple[Tensor, frozenset[int]]] = {}
        self._kept: list[Tensor] = []  # the transposes themselves, so that their ids stay theirs
        self.n: int | None = None  # the batch size, from the model's own inputs
        #: tensors computed from the batch (the model's inputs and everything made from them), by id;
        #: weakly held, so that a freed tensor's id, reused by another, is not taken for it
        self.batch_data: dict[int, weakref.ref] = {}
        #: where batch-data tensors hold the samples: id -> (the tensor, weakly held; its layout
        #: (dim, rows per sample), see :mod:`specreach.lnp.alignment`)
        self.layouts: dict[int, tuple[weakref.ref, Layout]] = {}
        #: ids of modules whose output the model modifies in place (``x += shortcut``): the model gets
        #: a copy, and the recorded output keeps its own gradient
        self.copy_outputs: set[int] = set()
        self._stack: list[ModuleCall] = []
        self._clock = 0
        self._handles: list[torch_hooks.RemovableHandle] = []
        self._mode = _ParameterUses(self)

    @property
    def root(self) -> ModuleCall:
        return self.calls[0]

    def note_batch_data(self, values: Any) -> None:
        for value in pytree.tree_leaves(values):
            if isinstance(value, Tensor):
                self.batch_data[id(value)] = weakref.ref(value)

    def is_batch_data(self, value: Any) -> bool:
        ref = self.batch_data.get(id(value))
        return ref is not None and ref() is value

    def layout(self, value: Any) -> Layout | None:
        """Where ``value`` holds the samples: (dim, rows per sample), or None."""
        entry = self.layouts.get(id(value))
        return entry[1] if entry is not None and entry[0]() is value else None

    def holds_samples_first(self, value: Any) -> bool:
        return self.layout(value) == (0, 1)

    def holds_rows_first(self, value: Any) -> bool:
        """The batch flattened into rows: the samples first, several rows each, in order."""
        found = self.layout(value)
        return found is not None and found[0] == 0 and found[1] > 1

    def splits_by_sample(self, value: Any) -> bool:
        """Whether the fast path may split ``value`` by sample along its first dim: it holds the samples
        there, or it is not computed from the batch and has the batch size first (a per-sample state made
        with ``x.new_zeros(n, d)``, a ``cls_token`` expanded over the batch)."""
        if self.is_batch_data(value):
            return self.holds_samples_first(value)
        return is_batched(value, self.n)

    def _note_layout(self, value: Tensor, found: Layout | None) -> None:
        if found is not None and self.n is not None and value.shape[found[0]] == self.n * found[1]:
            self.layouts[id(value)] = (weakref.ref(value), found)
        else:
            self.layouts.pop(id(value), None)

    def note_layouts(self, func, args: tuple, kwargs: dict, output: Any) -> None:
        """Where each result (and the operand an in-place function changed) holds the samples."""
        changed = [args[0]] if args and isinstance(args[0], Tensor) and _in_place(func) else []
        values = [v for v in [*pytree.tree_leaves(output), *changed] if isinstance(v, Tensor) and v.dim() > 0]
        n = self.n
        if n is None:  # no batch seen yet: nothing holds samples
            for value in values:
                self.layouts.pop(id(value), None)
            return
        found = {id(v): layout(func, args, kwargs, v, n, self.layout, self.is_batch_data) for v in values}
        for value in values:
            self._note_layout(value, found[id(value)])

    def note_op(self, func, args: tuple, kwargs: dict, output: Any, operands: list, batched: bool) -> None:
        call = self._stack[-1] if self._stack else None
        if call is None:
            return  # the measurement's own code, outside the model
        for pid, *_ in operands:
            call.uses.add(pid)
        transpose = (len(operands) == 1 and operands[0][1] == ("arg", 0) and operands[0][3] is None
                     and _is_transpose(func, args, kwargs))
        differentiable = torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad
        # Computed from parameters (and constants) alone: a later broadcast use is the per-sample one.
        # Expanded over the batch (a cls_token), it is where its per-sample gradient is taken, so it is a
        # use, not a batch-free intermediate; anything else from parameters alone has no samples (its
        # first dim may equal the batch size by chance: T5's (heads, q, k) position bias with heads = n).
        derives = (not transpose and not batched and differentiable and self.n is not None
                   and not (is_batched(output, self.n) and (_expands_over_batch(func, args, output)
                                                            or self._takes_batch_shaped_constant(args, kwargs))))
        use = OpUse(func, args, kwargs, output, call, self._tick(), operands, differentiable, transpose, derives,
                    output._version if isinstance(output, Tensor) else 0,
                    batch_first=not batched or not is_batched(output, self.n) or self.holds_samples_first(output),
                    split=frozenset(id(v) for _, v in _operands(args, kwargs) if self.splits_by_sample(v)))
        self.op_uses.append(use)
        if transpose and isinstance(output, Tensor):
            pid, _, transposed, _ = operands[0]
            self.transposes[id(output)] = (pid, not transposed)
            self._kept.append(output)
        elif derives:
            self.derived[id(output)] = (output, frozenset(pid for pid, *_ in operands))

    def _takes_batch_shaped_constant(self, args: tuple, kwargs: dict) -> bool:
        """An operand with the batch size first that is neither computed from the batch nor from parameters
        (BERT's token_type_ids, zeros expanded over the batch): a per-sample constant, so the use is per-sample."""
        return any(isinstance(v, Tensor) and is_batched(v, self.n) and id(v) not in self.parameter_ids
                   and id(v) not in self.transposes and id(v) not in self.derived for _, v in _operands(args, kwargs))

    def __enter__(self) -> "ForwardRecorder":
        self.clear()
        self.n = None
        self._stack.clear()
        for path, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(path), prepend=True, with_kwargs=True))
            self._handles.append(module.register_forward_hook(self._post_hook, with_kwargs=True, prepend=True))
        self._mode.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._mode.__exit__(*exc_info)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if exc_info[0] is None and self._stack:
            raise RuntimeError(f"module call '{self._stack[-1].name}' never returned during the recorded forward")

    def clear(self) -> None:
        """Drop the recorded calls (and with them the activations they keep alive)."""
        self.calls.clear()
        self.op_uses.clear()
        self.transposes.clear()
        self.derived.clear()
        self.batch_data.clear()
        self.layouts.clear()
        self._kept.clear()

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _pre_hook(self, path: str):
        def push(module, args, kwargs):
            parent = self._stack[-1] if self._stack else None
            if parent is None and self.n is None:
                self.n = _batch_size_of((*args, *kwargs.values()))
                self.note_batch_data((args, kwargs))
                for value in pytree.tree_leaves((args, kwargs)):  # by contract, the samples come first
                    if is_batched(value, self.n):
                        self._note_layout(value, (0, 1))
            call = ModuleCall(path, module, parent, start=self._tick())
            self.calls.append(call)
            self._stack.append(call)

        return push

    def _post_hook(self, module, args, kwargs, output):
        call = self._stack.pop()
        call.end = self._tick()
        call.args, call.kwargs, call.output = args, kwargs, output
        call.flattened_input = bool(args) and self.holds_rows_first(args[0])
        inputs = [v for v in pytree.tree_leaves((args, kwargs)) if isinstance(v, Tensor) and v.dim() > 0]
        call.split = frozenset(id(v) for v in inputs if self.splits_by_sample(v))
        if call.parent is not None:  # the model's own inputs and outputs hold the samples first by contract
            call.unsplit_batch_input = any(id(v) not in call.split and self.is_batch_data(v) for v in inputs)
            if is_batched(output, self.n) and self.is_batch_data(output) and not self.holds_samples_first(output):
                call.batch_first = False
        if isinstance(output, Tensor):
            call.version = output._version
            if id(module) in self.copy_outputs:  # the model changes it in place: hand it a copy
                return output.clone()
