"""Per-sample squared gradient norms, Σ_p ‖∂(rᵢᵀfᵢ)/∂p‖², from one recorded forward.

A :class:`PerSampleNormTape` is active during one forward pass: it records every module call
and every use of a trainable parameter (:mod:`specreach.lnp.forward_record`) and plans which
rule computes each parameter so that every use is seen (:mod:`specreach.lnp.coverage`). Then
:meth:`PerSampleNormTape.squared_norms` takes one backward of ``Σ_i r_iᵀ f_i`` that asks
autograd only for the gradients with respect to the planned calls' outputs — the parameters'
own gradients (half of an ordinary backward) are never computed — and turns (inputs, output
gradients) into per-sample norms:

- linear layers: ghost norms ``Σ_{t,t'} (a_t·a_t')(g_t·g_t')`` (the activations' Gram matrix
  computed once per forward, so a probe costs T²·d_out) or the materialized per-sample gradient
  Σ_t g_t a_tᵀ (T·d_in·d_out per probe), whichever is cheaper;
- embeddings: per sample, the output gradients summed over the positions of each distinct token
  (the grouping found once per forward), with the ``padding_idx`` positions' gradients removed (autograd
  gives that row no gradient);
- other layers with an Opacus grad-sample rule (norms, convolutions, …): the per-sample gradient;
- everything else: a per-sample vector-Jacobian product of the call (``torch.func``).

One forward serves any number of backwards (``retain_graph``): probes differ only in r.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Mapping, cast

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from opacus.grad_sample.embedding import compute_embedding_grad_sample

from specreach.lnp.distributed import Ranks
from specreach.lnp.layer_rules import applicable_rule, functional_call_context, input_scale
from specreach.lnp.coverage import CoveragePlan, RuleCall, plan_coverage
from specreach.lnp.forward_record import ForwardRecorder, is_batched
from specreach.lnp.readout import LinearReadout


#: Per model: ids of modules whose outputs the model modifies in place (see PerSampleNormTape.record).
_COPY_OUTPUTS: "weakref.WeakKeyDictionary[nn.Module, set[int]]" = weakref.WeakKeyDictionary()


def group_of(param_name: str) -> str:
    """The top-level submodule a parameter belongs to (root-owned ones: their own name)."""
    return param_name.split(".", 1)[0]


class PerSampleNormTape:
    """Records one forward pass at a time, then computes per-sample norms for probe vectors."""

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter]):
        self.model = model
        self.params = dict(params)
        self.param_names = {id(p): name for name, p in params.items()}
        self.recorder = ForwardRecorder(model, self.params)
        self.plan: CoveragePlan | None = None
        #: Positions of the recorded outputs that count (True), or None: all. Set by the estimator
        #: flow from the loss's ignored targets (``lnp-math.md`` §8); probes are zero elsewhere.
        self.output_mask: Tensor | None = None
        #: The ranks of a data-parallel step whose shards the probe sums combine over (set by the
        #: estimator flow; None: this process's batch alone).
        self.ranks: Ranks | None = None
        #: What every probe of this forward reuses (activation Gram matrices, normalized inputs).
        self._reused: dict[tuple[int, str], Tensor] = {}
        #: Ids of recorded calls whose per-sample VJP torch.func.vmap could not run (looped instead).
        self._vmap_failed: set[int] = set()

    def __enter__(self) -> "PerSampleNormTape":
        self.plan = None
        self.recorder.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.recorder.__exit__(*exc_info)
        if exc_info[0] is None:
            root = self.recorder.root
            self.plan = plan_coverage(self.recorder, self.params, root.output.shape[0])

    def record(self, run: Callable[[], Tensor]) -> Tensor:
        """Run the forward ``run()`` on the tape and return its outputs.

        When the model modifies a recorded module output in place (a ResNet's ``x += shortcut`` on
        a norm's output), that output's gradient is lost: the forward is run again with those
        modules handing the model a copy (remembered for this model, so later forwards need one run).

        Which dimension of an inner tensor is the batch is read from its shape (the first, when it
        has the batch size); where another dimension has the batch size too, that is confirmed
        before the plan is used (see :meth:`_confirm_batch_dims`).
        """
        self.prepare()
        with self:
            outputs = run()
        if not self.adopt(outputs):
            del outputs
            self.clear()
            with self:
                outputs = run()
            self.adopt(outputs)
        return outputs

    def prepare(self) -> None:
        """Before a forward is recorded: modules known to have their outputs changed in place hand copies."""
        self.recorder.copy_outputs = _COPY_OUTPUTS.setdefault(self.model, set())

    def adopt(self, outputs: Tensor) -> bool:
        """After a forward recorded with ``with tape:`` (here, or by the training step itself): False if the
        model changed a recorded output in place (those modules hand a copy from the next forward on);
        else the batch dims are confirmed and the plan is ready."""
        modified = {id(rule.call.module) for rule in self.coverage.rule_calls
                    if rule.call.output._version != rule.call.version}
        if modified:
            _COPY_OUTPUTS.setdefault(self.model, set()).update(modified)
            return False
        if self._confirm_batch_dims(outputs):
            self.plan = plan_coverage(self.recorder, self.params, outputs.shape[0])
        return True

    def _confirm_batch_dims(self, outputs: Tensor) -> bool:
        """Mark the calls and uses whose tensors only look batch-first; True if any was marked.

        A tensor whose first dimension has the batch size n is taken to be split by sample there,
        which a shape alone cannot tell when another of its dimensions is n as well (a
        sequence-first layer, shape (T, n, d), with T = n). For those, one backward from one sample's
        outputs decides: a batch-first tensor receives gradient in that sample's row only. A call or
        use that fails (or whose tensor is outside the graph, so cannot be asked) is not per-sample,
        and its parameters take a path through a call that is.
        """
        n = outputs.shape[0]
        owners: dict[int, list] = {}
        tensors: dict[int, Tensor] = {}

        def suspect(value: Any, owner) -> None:
            if is_batched(value, n) and n in value.shape[1:]:
                tensors[id(value)] = value
                owners.setdefault(id(value), []).append(owner)

        root = self.recorder.root
        model_inputs = {id(v) for v in (*root.args, *root.kwargs.values())}  # batch-first by contract
        for call in self.recorder.calls:
            if call is root:
                continue
            suspect(call.output, call)
            if applicable_rule(call.module) is None:  # a layer rule's input has its output's leading dims
                for value in (*call.args, *call.kwargs.values()):
                    if id(value) not in model_inputs:
                        suspect(value, call)
        for use in self.recorder.op_uses:
            suspect(use.output, use)
        if not tensors:
            return False
        askable = [t for t in tensors.values() if t.requires_grad and outputs.requires_grad]
        wrong = {key for key, t in tensors.items() if not (t.requires_grad and outputs.requires_grad)}
        if askable:
            sample = n - 1
            vectors = torch.zeros_like(outputs)
            vectors[sample] = 1.0
            grads = torch.autograd.grad(outputs, askable, grad_outputs=vectors, retain_graph=True, allow_unused=True)
            for tensor, grad in zip(askable, grads):
                if grad is not None and bool(grad.reshape(n, -1)[:sample].any()):
                    wrong.add(id(tensor))
        for key in wrong:
            for owner in owners[key]:
                owner.batch_first = False
        return bool(wrong)

    def clear(self) -> None:
        """Drop the recorded tensors (and with them the activations they keep alive)."""
        self.recorder.clear()
        self.plan = None
        self.output_mask = None
        self._reused.clear()
        self._vmap_failed.clear()

    @property
    def coverage(self) -> CoveragePlan:
        """The coverage plan of the recorded forward."""
        if self.plan is None:
            raise RuntimeError("no forward has been recorded on this tape (run it inside `with tape:`)")
        return self.plan

    @property
    def paths(self) -> dict[str, str]:
        """Parameter name -> how its per-sample gradient is computed, for the last recorded forward."""
        return dict(self.coverage.paths) if self.plan is not None else {}

    def linear_readout(self, outputs: Tensor) -> LinearReadout | None:
        """The linear layer that produced ``outputs`` itself, if its share can be taken in closed form.

        That needs the readout's own parameters computed by its layer rule alone (not tied to
        another use), one call, and every other planned call finished before the readout started
        (so that all of them lie below the readout's input).
        """
        for rule in self.coverage.rule_calls:
            call = rule.call
            layer_rule = applicable_rule(call.module)
            if rule.vjp or layer_rule is None or layer_rule.method != "linear" or call.output is not outputs:
                continue
            calls_of_module = [c for c in self.recorder.calls if c.module is call.module]
            own = [p for p in call.module.parameters(recurse=False) if id(p) in self.param_names]
            if (len(calls_of_module) == 1 and len(rule.parameters) == len(own)
                    and not any(id(p) in self.coverage.summed for p in own)
                    and all(tick < call.start for tick in self.coverage.ticks(leave_out=rule))):
                return LinearReadout(call, self.param_names)
        return None

    def squared_norms(self, outputs: Tensor, vectors: Tensor, skip: LinearReadout | None = None) -> dict[str, Tensor]:
        """Per-sample ``‖∂(Σ_i vectors_iᵀ outputs_i)/∂p‖²`` for each trainable parameter name.

        ``outputs`` may be any recorded tensor, e.g. a readout's input; ``skip`` leaves that
        readout's own parameters out (their share is computed in closed form).
        """
        rules = [rule for rule in self.coverage.rule_calls if skip is None or rule.call is not skip.call]
        op_rules = self.coverage.op_rules
        for output, version, where in [*((r.call.output, r.call.version, f"module '{r.call.name}'") for r in rules),
                                       *((r.use.output, r.use.version, r.name) for r in op_rules)]:
            if output._version != version:
                raise RuntimeError(
                    f"the output of {where} was modified in place after it was computed, so its gradient cannot "
                    "be recovered; make the operation that follows it out of place (e.g. inplace=False)."
                )
        targets = list({id(t): t for t in [*(r.call.output for r in rules), *(r.use.output for r in op_rules)]}.values())
        backprops = dict(zip(
            [id(t) for t in targets],
            torch.autograd.grad(outputs, targets, grad_outputs=vectors, retain_graph=True, allow_unused=True),
        ))
        n = vectors.shape[0]
        with torch.no_grad():  # the norms themselves are never differentiated
            norms: dict[str, Tensor] = {}
            summed_grads: dict[int, Tensor] = {}  # per-sample gradients to sum before the norm
            for rule in rules:
                backprop = backprops[id(rule.call.output)]
                if backprop is None:  # the call does not reach these outputs: zero Jacobian
                    continue
                for param, value, is_norm in self._per_sample(rule, backprop, n):
                    pid = id(param)
                    if is_norm:
                        norms[self.param_names[pid]] = value.square()
                    else:
                        summed_grads[pid] = summed_grads[pid] + value if pid in summed_grads else value
            for op_rule in op_rules:
                backprop = backprops[id(op_rule.use.output)]
                if backprop is not None:
                    pid = id(op_rule.parameter)
                    grad = op_rule.per_sample(backprop, n)
                    summed_grads[pid] = summed_grads[pid] + grad if pid in summed_grads else grad
            for pid, grads in summed_grads.items():
                norms[self.param_names[pid]] = torch.linalg.vector_norm(grads.reshape(n, -1), dim=1).square()
        return norms

    def _per_sample(self, rule: RuleCall, backprop: Tensor, n: int):
        """Yield (parameter, per-sample norm or gradient, is_norm) for the parameters planned on this call.

        Only those: a layer's rule also gives its other tensors, which the plan may compute elsewhere
        (a weight also used outside the layer takes op rules while the layer's bias takes its rule)
        or which are not parameters at all (a ``weight`` computed from ``weight_orig`` by a hook).
        """
        planned = {id(p) for p in rule.parameters.values()}
        for param, value, is_norm in self._rule_values(rule, backprop, n):
            if id(param) in planned:
                yield param, value, is_norm

    def _rule_values(self, rule: RuleCall, backprop: Tensor, n: int):
        if rule.vjp:
            yield from _call_vjp(rule, backprop, n, self._vmap_failed)
            return
        module, call = rule.call.module, rule.call
        flattened = not call.splits(call.args[0])  # rows of the flattened batch (see ModuleCall.flattens_batch)
        materialize = flattened or any(id(p) in self.coverage.summed for p in rule.parameters.values())
        layer = applicable_rule(module)
        assert layer is not None  # the plan gives a layer rule only to a layer within it
        if layer.method == "linear":
            yield from self._linear(rule, backprop, materialize, n)
        elif layer.method == "embedding":
            yield from self._embedding(rule, backprop, materialize, n)
        elif layer.method in ("layer_norm", "rms_norm"):
            yield from self._norm(rule, backprop, n, rms=layer.method == "rms_norm")
        else:
            assert layer.grad_sampler is not None
            for param, grad in layer.grad_sampler(module, _contiguous(call.args), backprop).items():
                # per-row gradients of a flattened batch: sum each sample's rows
                yield param, grad.reshape(n, -1, *param.shape).sum(dim=1) if flattened else grad, False


    def _once(self, rule: RuleCall, what: str, compute) -> Tensor:
        key = (id(rule.call), what)
        if key not in self._reused:
            self._reused[key] = compute()
        return self._reused[key]

    def _linear(self, rule: RuleCall, backprop: Tensor, materialize: bool, n: int):
        """Linear layers over any number of positions T: ghost norm or materialized gradient, by cost."""
        module = cast(nn.Linear, rule.call.module)
        scale = input_scale(module)
        # Sizes from the weight, not the attributes: mup's MuSharedReadout sets them swapped.
        out_features, in_features = module.weight.shape
        g = backprop.reshape(n, -1, out_features)
        positions = g.shape[1]

        def activations() -> Tensor:
            return (rule.call.args[0].reshape(n, -1, in_features) * scale).to(g.dtype)

        planned = {id(p) for p in rule.parameters.values()}
        weight = module.weight if id(module.weight) in planned else None
        bias = module.bias if module.bias is not None and id(module.bias) in planned else None
        # Per probe: ghost T²·d_out (the activations' Gram is reused), materialized T·d_in·d_out.
        ghost = not materialize and positions * positions * out_features <= (
            positions * in_features * out_features) and positions * positions * n <= _GRAM_LIMIT
        if weight is not None:
            if ghost:
                gram = self._once(rule, "gram", lambda: torch.bmm(activations(), activations().transpose(1, 2)))
                yield weight, (gram * torch.bmm(g, g.transpose(1, 2))).sum(dim=(1, 2)).clamp(min=0).sqrt(), True
            else:
                a = self._once(rule, "activations", activations)
                yield weight, torch.bmm(g.transpose(1, 2), a), False
        if bias is not None:
            summed = g.sum(dim=1)
            if materialize:
                yield bias, summed, False
            else:
                yield bias, summed.square().sum(dim=1).sqrt(), True

    def _embedding(self, rule: RuleCall, backprop: Tensor, materialize: bool, n: int):
        """Embedding rows: per sample ‖Σ_t e_{x_t} g_tᵀ‖² = Σ over its distinct tokens of ‖Σ_{t: x_t = v} g_t‖².

        The (sample, token) grouping depends only on the tokens, so it is found once per forward;
        a probe then costs one ``index_add`` of its output gradients. Autograd gives the
        ``padding_idx`` row no gradient, so neither do we.
        """
        module = cast(nn.Embedding, rule.call.module)
        tokens = rule.call.args[0]
        if module.padding_idx is not None:
            backprop = backprop * (tokens != module.padding_idx).unsqueeze(-1).to(backprop.dtype)
        if materialize:
            for param, grad in compute_embedding_grad_sample(module, [tokens.contiguous()], backprop).items():
                yield param, grad, False
            return
        if not module.weight.requires_grad:
            return
        pair_of_position, sample_of_pair = self._once(rule, "token groups", lambda: _token_groups(tokens, n))
        by_pair = backprop.new_zeros(sample_of_pair.shape[0], module.embedding_dim)
        by_pair.index_add_(0, pair_of_position, backprop.reshape(-1, module.embedding_dim))
        squared = backprop.new_zeros(n).index_add_(0, sample_of_pair, by_pair.square().sum(dim=1))
        yield module.weight, squared.sqrt(), True

    def _norm(self, rule: RuleCall, backprop: Tensor, n: int, rms: bool):
        """LayerNorm and RMSNorm, y = x̂ ⊙ w (+ b): per sample Σ_t g_t ⊙ x̂_t for the weight and Σ_t g_t for
        the bias, the normalized input x̂ computed once per forward."""
        module = cast(nn.LayerNorm | nn.RMSNorm, rule.call.module)
        shape = list(module.normalized_shape)
        planned = {id(p) for p in rule.parameters.values()}
        weight, bias = module.weight, getattr(module, "bias", None)
        if weight is not None and id(weight) in planned:
            normalize = torch.nn.functional.rms_norm if rms else torch.nn.functional.layer_norm
            normalized = self._once(rule, "normalized", lambda: normalize(rule.call.args[0], shape, eps=cast(float, module.eps)))
            yield weight, (normalized * backprop).reshape(n, -1, *weight.shape).sum(dim=1), False
        if bias is not None and id(bias) in planned:
            yield bias, backprop.reshape(n, -1, *bias.shape).sum(dim=1), False


#: Largest Gram-matrix cache (n·T² entries) per layer; beyond it the gradient is materialized.
_GRAM_LIMIT = 2**24


def _contiguous(args: tuple) -> list:
    """Opacus's rules ``view`` their inputs (e.g. token ids sliced from a longer window)."""
    return [a.contiguous() if isinstance(a, Tensor) else a for a in args]


def _token_groups(tokens: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """For each position of the flattened (sample, position) grid, the index of its distinct
    (sample, token) pair; and for each pair, its sample."""
    tokens = tokens.reshape(n, -1)
    stride = int(tokens.max()) + 1 if tokens.numel() else 1  # token ids are ≥ 0 (nn.Embedding checks)
    samples = torch.arange(n, device=tokens.device).unsqueeze(1)
    pairs, pair_of_position = torch.unique((samples * stride + tokens).reshape(-1), return_inverse=True)
    return pair_of_position, pairs // stride


def _call_vjp(rule: RuleCall, backprop: Tensor, n: int, vmap_failed: set[int]):
    """Per-sample gradients of the rule's parameters by a VJP of the recorded call, one sample at a time.

    The call is re-run on each sample alone (``torch.func.functional_call`` with the parameters as
    the only primals), so every use inside it is differentiated: vmapped where ``torch.func.vmap``
    can run the call, otherwise (data-dependent control flow, ops without a batching rule such as
    ``nn.LSTM``'s) in a loop over the samples.
    """
    call = rule.call
    dims = pytree.tree_map(lambda v: 0 if call.splits(v) else None, (call.args, call.kwargs))
    inputs = pytree.tree_map(lambda v: v.detach() if isinstance(v, Tensor) else v, (call.args, call.kwargs))
    primals = {local: p.detach() for local, p in rule.parameters.items()}

    def sample_vjp(sample_inputs, grad_output):
        args, kwargs = pytree.tree_map(
            lambda d, v: v.unsqueeze(0) if d == 0 else v, dims, sample_inputs, is_leaf=lambda d: d is None,
        )

        def run(params):
            return torch.func.functional_call(call.module, params, args, kwargs)

        _, vjp = torch.func.vjp(run, primals)
        return vjp(grad_output.unsqueeze(0))[0]

    with functional_call_context(call.module):
        if id(call) not in vmap_failed:
            try:
                grads = torch.func.vmap(sample_vjp, in_dims=(dims, 0), randomness="error")(inputs, backprop)
            except RuntimeError:
                vmap_failed.add(id(call))  # the forward's later probes go straight to the loop
        if id(call) in vmap_failed:
            grads = _looped_vjp(rule, dims, inputs, primals, backprop, n)
    for local, grad in grads.items():
        yield rule.parameters[local], grad, False


def _looped_vjp(rule: RuleCall, dims, inputs, primals: dict[str, Tensor], backprop: Tensor, n: int) -> dict[str, Tensor]:
    """The per-sample VJP as a loop of plain autograd calls, one sample at a time.

    Re-running a call on one sample measures the function of that sample alone; that is the
    model's only if the call keeps samples independent, so each sample's output alone must equal
    its output in the batch (a branch on a batch statistic, say, would not).
    """
    call = rule.call
    recorded = call.output.detach()
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-4}.get(recorded.dtype, 1e-2)
    per_sample: dict[str, list[Tensor]] = {local: [] for local in primals}
    leaves = {local: p.requires_grad_(True) for local, p in ((k, v.clone()) for k, v in primals.items())}
    for i in range(n):
        sample = slice(i, i + 1)
        args, kwargs = pytree.tree_map(
            lambda d, v, sample=sample: v[sample] if d == 0 else v, dims, inputs, is_leaf=lambda d: d is None,
        )
        with torch.enable_grad():
            try:
                output = torch.func.functional_call(call.module, leaves, args, kwargs)
            except RuntimeError as error:  # an input that holds the samples but could not be told apart
                raise ValueError(
                    f"module call '{call.name}' cannot be run on sample {i} alone ({error}), so its per-sample "
                    "gradients cannot be taken on the fast path; measure this model with estimator='entk' (small "
                    "models), and please report it") from error
            if not isinstance(output, Tensor) or not torch.allclose(
                    output.detach(), recorded[i:i + 1], rtol=tolerance, atol=tolerance * float(recorded.abs().max())):
                raise ValueError(
                    f"module call '{call.name}' gives sample {i} a different output alone than in the batch, so "
                    "its samples are coupled (e.g. a branch or statistic over the whole batch) and per-sample "
                    "gradients are not defined; make the forward treat every sample on its own"
                )
            grads = torch.autograd.grad(output, list(leaves.values()), grad_outputs=backprop[i:i + 1],
                                        allow_unused=True)
        for (local, leaf), grad in zip(leaves.items(), grads):
            per_sample[local].append(torch.zeros_like(leaf) if grad is None else grad)
    return {local: torch.stack(grads) for local, grads in per_sample.items()}
