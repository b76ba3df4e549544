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
    #: an input computed from the batch is not split by sample along its first dim (the tokens of
    #: every bag flattened into one list, with offsets; the batch flattened into rows): re-running
    #: the call on one sample's slices would not be that sample's computation
    unsplit_batch_input: bool = False

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

    def batched_tensors(self, n: int) -> list[Tensor]:
        return [v for v in (*self.args, *self.kwargs.values()) if is_batched(v, n)]

    def is_per_sample(self, n: int) -> bool:
        """Batch-first tensor output computed from batch-first tensor inputs.

        Only then can the output's gradient be split by sample. A call that computes from
        parameters alone (a parametrization, a position table) is not per-sample.
        """
        return (self.batch_first and not self.unsplit_batch_input and is_batched(self.output, n)
                and bool(self.batched_tensors(n)))

    def flattens_batch(self, n: int) -> bool:
        """The input is the batch flattened into rows sample by sample (``x.reshape(-1, d)`` of a
        batch-first tensor, as Swin's windows and OPT's feed-forward), so that sample i owns the
        i-th n-th of the rows, and the output has the same rows."""
        first = self.args[0] if self.args else None
        return (self.flattened_input and isinstance(first, Tensor) and isinstance(self.output, Tensor)
                and self.output.dim() > 0 and self.output.shape[0] == first.shape[0])


def sample_rows(value: Any, n: int) -> bool:
    """A contiguous view of the whole of a contiguous batch-first tensor, with more rows than samples:
    its rows are the samples' rows in order, n-th by n-th."""
    if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] <= n or value.shape[0] % n:
        return False
    base = value._base
    return bool(base is not None and base.dim() > 0 and base.shape[0] == n and base.is_contiguous()
                and value.is_contiguous() and value.numel() == base.numel()
                and value.storage_offset() == base.storage_offset())


#: Functions that compute each row of their output from the same row of their inputs: the sample
#: rows of a flattened batch stay the sample rows through them.
_ROW_WISE = {
    F.linear, F.layer_norm, F.rms_norm, F.group_norm, F.dropout, F.gelu, F.relu, F.silu, F.mish,
    F.softplus, F.leaky_relu, F.elu, F.hardtanh, F.hardswish, torch.tanh, torch.sigmoid, torch.relu,
    torch.Tensor.tanh, torch.Tensor.sigmoid, torch.Tensor.relu, torch.add, torch.sub, torch.mul, torch.div,
    torch.Tensor.add, torch.Tensor.sub, torch.Tensor.mul, torch.Tensor.div, torch.Tensor.to,
    torch.Tensor.contiguous, torch.Tensor.float, torch.Tensor.type_as,
}

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


def is_batched(value: Any, n: int) -> bool:
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
        if batched:  # computed from the batch: so is whatever it returns
            recorder.note_batch_data(output)
            recorder.note_rows(func, args, kwargs, output)
        if operands:
            recorder.note_op(func, args, kwargs, output, operands, batched)
        return output


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
        #: ids of tensors that are the batch flattened into rows, sample by sample (kept alive)
        self.sample_rows: set[int] = set()
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

    def note_rows(self, func, args: tuple, kwargs: dict, output: Any) -> None:
        """Follow the batch flattened into rows: views of the batch start it; row-wise functions keep it."""
        if not isinstance(output, Tensor) or self.n is None:
            return
        if sample_rows(output, self.n):
            self.sample_rows.add(id(output))
            self._kept.append(output)
            return
        if func not in _ROW_WISE or output.dim() == 0:
            return
        rows = output.shape[0]
        tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, Tensor)]
        flattened = [v for v in tensors if id(v) in self.sample_rows]
        if not flattened or any(v.shape[0] != rows for v in flattened):
            return
        # every other operand is the same rows, or the same for every row (broadcast, parameters)
        if all(id(v) in self.sample_rows or v.dim() < output.dim() or v.shape[0] == 1 or not self.is_batch_data(v)
               for v in tensors):
            self.sample_rows.add(id(output))
            self._kept.append(output)

    def note_batch_data(self, values: Any) -> None:
        for value in pytree.tree_leaves(values):
            if isinstance(value, Tensor):
                self.batch_data[id(value)] = weakref.ref(value)

    def is_batch_data(self, value: Any) -> bool:
        ref = self.batch_data.get(id(value))
        return ref is not None and ref() is value

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
        # A batch-shaped result (a cls_token expanded over the batch) is where its per-sample gradient
        # is taken, so it is a use, not a batch-free intermediate.
        derives = (not transpose and not batched and differentiable and self.n is not None
                   and not is_batched(output, self.n))
        use = OpUse(func, args, kwargs, output, call, self._tick(), operands, differentiable, transpose, derives,
                    output._version if isinstance(output, Tensor) else 0)
        self.op_uses.append(use)
        if transpose and isinstance(output, Tensor):
            pid, _, transposed, _ = operands[0]
            self.transposes[id(output)] = (pid, not transposed)
            self._kept.append(output)
        elif derives:
            self.derived[id(output)] = (output, frozenset(pid for pid, *_ in operands))

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
        self.sample_rows.clear()
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
            call = ModuleCall(path, module, parent, start=self._tick())
            self.calls.append(call)
            self._stack.append(call)

        return push

    def _post_hook(self, module, args, kwargs, output):
        call = self._stack.pop()
        call.end = self._tick()
        call.args, call.kwargs, call.output = args, kwargs, output
        call.flattened_input = bool(args) and self.n is not None and (
            id(args[0]) in self.sample_rows or sample_rows(args[0], self.n))
        if call.parent is not None and self.n is not None:  # the model's own inputs are batch-first by contract
            call.unsplit_batch_input = any(
                isinstance(value, Tensor) and value.dim() > 0 and not is_batched(value, self.n) and self.is_batch_data(value)
                for value in pytree.tree_leaves((args, kwargs)))
        if isinstance(output, Tensor):
            call.version = output._version
            if id(module) in self.copy_outputs:  # the model changes it in place: hand it a copy
                return output.clone()
