"""Which rule computes each trainable parameter's per-sample gradient, chosen so that every
use of the parameter is seen (``lnp-math.md`` §8: every use of a parameter counts).

From a :class:`~specreach.lnp.forward_record.ForwardRecorder` record, each parameter takes one
of these paths:

- **layer rule**: used only inside calls of its own module, a layer with a per-sample rule
  (``nn.Linear``, ``nn.Embedding``, norms, convolutions …, matched by exact type), applied
  per-sample. The rule sees the call's input and output gradient: ghost norms or materialized
  per-sample gradients, no second forward.
- **op rules**: otherwise, when every torch function that received it has a per-sample rule
  (:mod:`specreach.lnp.op_rules`: broadcast add/mul and expand, as for timm ViT's ``pos_embed``
  and ``cls_token``; ``F.linear``/matmul, as for a tied head ``h @ wte.weight.T`` or a submodule
  called with ``.forward()``; ``F.embedding``): each use's rule, on that function's output gradient.
- **module VJP**: used only inside calls of its own module, a module without a rule: a per-sample
  vector-Jacobian product of that call (``torch.func``), which re-runs the call and so sees every
  use inside it.
- **enclosing VJP**: any other case — a parametrization, ``nn.MultiheadAttention``'s functional
  use of ``out_proj``, a parameter passed to another module: the per-sample VJP of the innermost
  per-sample call that encloses every use and holds the parameter.
- **unused**: no torch function received it, so its Jacobian is zero.

A parameter used by several calls (a module applied twice, weights tied between modules) has
its per-sample gradients materialized and summed before the norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from torch import Tensor, nn

from specreach.lnp.layer_rules import applicable_rule, layer_rule
from specreach.lnp.forward_record import ForwardRecorder, ModuleCall
from specreach.lnp.op_rules import OpRule, classify

#: The parameter attributes a layer rule knows; a layer holding others (e.g. ``weight_orig`` of
#: ``torch.nn.utils.prune``) is not the plain layer its rule describes.
RULE_ATTRIBUTES = {"weight", "bias"}


@dataclass
class RuleCall:
    """A call whose output gradient feeds a per-sample layer rule or a module VJP."""

    call: ModuleCall
    #: parameters this call computes, by their name relative to ``call.module``
    parameters: dict[str, nn.Parameter] = field(default_factory=dict)
    vjp: bool = False  # False: the module's layer rule; True: a per-sample VJP of the call


@dataclass
class CoveragePlan:
    rule_calls: list[RuleCall]
    op_rules: list[OpRule]
    #: ids of parameters with more than one contributing call: materialize, sum, then take the norm
    summed: set[int]
    #: parameter name -> how its per-sample gradient is computed (for ``LNPResult.paths``)
    paths: dict[str, str]

    def ticks(self, leave_out: "RuleCall | None" = None) -> list[int]:
        """When the tensor each rule needs the gradient of was computed (all rules but ``leave_out``)."""
        return ([r.call.end for r in self.rule_calls if r is not leave_out]
                + [r.use.tick for r in self.op_rules])


def plan_coverage(record: ForwardRecorder, parameters: Mapping[str, nn.Parameter], n: int) -> CoveragePlan:
    """Decide, for every trainable parameter, the calls whose rules together see all its uses."""
    names = {id(p): name for name, p in parameters.items()}
    owners: dict[int, list[nn.Module]] = {}
    for module in record.model.modules():
        for _, p in module.named_parameters(recurse=False):
            if id(p) in names:
                owners.setdefault(id(p), []).append(module)
    uses: dict[int, list[ModuleCall]] = {}
    for call in record.calls:
        for pid in call.uses:
            uses.setdefault(pid, []).append(call)
    op_uses: dict[int, list] = {}
    for use in record.op_uses:
        for pid in {operand[0] for operand in use.operands}:
            op_uses.setdefault(pid, []).append(use)

    rule_calls: dict[tuple[int, bool], RuleCall] = {}
    op_rules: list[OpRule] = []
    contributions: dict[int, int] = {}
    paths: dict[str, str] = {}
    for pid, name in names.items():
        if pid not in uses:
            paths[name] = "unused: no operation of the forward received it, so its Jacobian is zero"
            continue
        covering = _own_calls(uses[pid], owners.get(pid, []), pid, n)
        if covering is None or any(vjp for _, vjp in covering):
            rules = _op_rules(op_uses.get(pid, []), pid, parameters[name], n)
            if rules is not None:
                op_rules.extend(rules)
                contributions[pid] = len(rules)
                paths[name] = "op rules: " + " + ".join(sorted(f"{r.kind} ({r.name})" for r in rules))
                continue
        if covering is None:
            enclosing = _enclosing_call(uses[pid], pid, n, name)
            covering = [(enclosing, True)]
            paths[name] = f"enclosing VJP of '{enclosing.name}' (used outside its own module's layer rule)"
        else:
            kinds = {"module VJP" if vjp else _rule_name(call.module) for call, vjp in covering}
            where = sorted({call.name for call, _ in covering})
            paths[name] = f"{' + '.join(sorted(kinds))} of {', '.join(repr(w) for w in where)}" + _unproven(covering)
        for call, vjp in covering:
            rule = rule_calls.setdefault((id(call), vjp), RuleCall(call, vjp=vjp))
            rule.parameters[_local_name(call.module, pid, name)] = parameters[name]
        contributions[pid] = len(covering)
    summed = {pid for pid, count in contributions.items() if count > 1}
    return CoveragePlan(list(rule_calls.values()), op_rules, summed, paths)


#: Op rules materialize per-sample gradients; beyond this many entries (n · parameter size) a
#: parameter takes the VJP path, which chunks nothing either but re-runs only what it must.
_OP_RULE_LIMIT = 2**28


def _op_rules(uses: list, pid: int, parameter: nn.Parameter, n: int) -> list[OpRule] | None:
    """A rule for every use of the parameter, or None if one use has none."""
    if not uses or n * parameter.numel() > _OP_RULE_LIMIT:
        return None
    rules: list[OpRule] = []
    for use in uses:
        if isinstance(use.output, Tensor) and use.output._version != use.version:
            return None  # its output was modified in place afterwards: its gradient is gone
        rule = classify(use, pid, parameter, n)
        if rule is None:
            return None
        if isinstance(rule, OpRule):
            rules.append(rule)
    return rules or None


def _own_calls(use_calls: list[ModuleCall], owners: list[nn.Module], pid: int, n: int):
    """The owner calls whose rules see every use of the parameter, or None if some use escapes them."""
    covering: dict[int, tuple[ModuleCall, bool]] = {}
    for use in use_calls:
        owner_call = next((c for c in use.ancestors() if any(c.module is m for m in owners)), None)
        if owner_call is None or not isinstance(owner_call.output, Tensor):
            return None
        # A layer rule describes the layer's own operation only; anything else inside the call
        # (a use in a nested call, extra keyword inputs) takes the VJP of the whole call.
        rule = applicable_rule(owner_call.module) is not None and owner_call is use and _rule_applies(owner_call, pid, n)
        if not owner_call.is_per_sample(n) and not rule:
            return None
        previous_vjp = covering.get(id(owner_call), (None, False))[1]
        covering[id(owner_call)] = (owner_call, previous_vjp or not rule)
    chosen = [call for call, _ in covering.values()]
    if any(a is not b and a.encloses(b) for a in chosen for b in chosen):
        return None  # a module nested in itself: its VJPs would count the inner uses twice
    return list(covering.values())


def _rule_applies(call: ModuleCall, pid: int, n: int) -> bool:
    """The layer's rule sees this call: its own weight/bias, a batch-first input (or, for layers whose
    rule gives per-row gradients, the batch flattened into rows) and nothing else."""
    module = call.module
    own = {local for local, p in module.named_parameters(recurse=False) if id(p) == pid}
    if not own <= RULE_ATTRIBUTES or not call.args or call.kwargs:
        return False
    if call.is_per_sample(n) and call.splits(call.args[0]):
        return True
    rule = layer_rule(module)
    return rule is not None and rule.method != "embedding" and call.flattens_batch(n)


def _enclosing_call(use_calls: list[ModuleCall], pid: int, n: int, name: str) -> ModuleCall:
    """The innermost per-sample call that encloses every use and holds the parameter."""
    common = list(use_calls[0].ancestors())
    for use in use_calls[1:]:
        common = [c for c in common if c.encloses(use)]
    for call in common:
        holds = any(id(p) == pid for p in call.module.parameters())
        if holds and call.is_per_sample(n) and isinstance(call.output, Tensor):
            return call
    raise ValueError(
        f"parameter '{name}' is used where no per-sample module call encloses all its uses and holds it "
        f"(calls using it: {sorted({c.name for c in use_calls})}); per-sample gradients of it are not defined "
        "this way. Make the model's forward take the batch first and return a batch-first tensor, or use "
        "estimator='entk'."
    )


def _local_name(module: nn.Module, pid: int, name: str) -> str:
    for local, p in module.named_parameters(remove_duplicate=False):
        if id(p) == pid:
            return local
    raise AssertionError(f"{name} not found in the module chosen to compute it")


def _rule_name(module: nn.Module) -> str:
    return f"{type(module).__name__} layer rule"


def _unproven(covering: list[tuple[ModuleCall, bool]]) -> str:
    """Why a layer that has a rule took the VJP instead: the rule was not proven for its configuration."""
    reasons = {}
    for call, vjp in covering:
        rule = layer_rule(call.module)
        if vjp and rule is not None and rule.refuses(call.module) is not None:
            reasons[type(call.module).__name__] = rule.refuses(call.module)
    return "".join(f" ({kind} layer rule not proven for {why})" for kind, why in reasons.items())
