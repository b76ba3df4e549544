"""Which outputs count, and over how many units the loss is a mean (``lnp-math.md`` §1, §8).

- **Ignored targets are not samples.** Positions whose target the loss ignores (``ignore_index``,
  e.g. padding tokens at −100, or a user's loss mask) contribute nothing to g; they are also left
  out of J (so of χ_net and N) and of the unit count m. Positions that enter the loss count, even
  where their g happens to be 0.
- **The loss is a mean.** L_X = (1/m_X) Σ_u ℓ_u. A summed loss scales L by the batch factor; a
  loss that mixes samples has no per-sample decomposition. Both are refused.

A *position* is one entry of the targets: the targets' shape is a prefix of the outputs' shape
(classification: (n,) against (n, classes); next-token prediction: (n, T) against (n, T, vocab)),
and a position owns the output coordinates below it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: PyTorch's default ``ignore_index`` of cross-entropy and NLL losses.
DEFAULT_IGNORE_INDEX = -100
IgnoreIndex = int | None | Literal["auto"]


def declared_ignore_index(loss_fn: Any) -> int | None:
    """The ``ignore_index`` a cross-entropy or NLL loss declares, if ``loss_fn`` is one we recognise."""
    if isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)):
        return loss_fn.ignore_index
    if isinstance(loss_fn, functools.partial) and loss_fn.func in (F.cross_entropy, F.nll_loss):
        return loss_fn.keywords.get("ignore_index", DEFAULT_IGNORE_INDEX)
    return None


def counted_positions(loss_fn: Any, outputs: Tensor, targets: Any, output_grad: Tensor, which: str,
                      ignore_index: IgnoreIndex = "auto", loss_mask: Tensor | None = None) -> Tensor | None:
    """A boolean mask over the positions (True: counted), or None when every position counts.

    ``ignore_index="auto"``: the value the loss declares (cross-entropy, NLL), else −100;
    positions with that target are left out where the loss gradient there is exactly zero
    (the loss ignores them), and counted otherwise. An explicit ``ignore_index`` or
    ``loss_mask`` is checked against the gradient: the loss must really ignore those positions.
    """
    if loss_mask is not None:
        mask = _aligned(loss_mask.to(torch.bool), outputs, f"loss_mask_{which.lower()}")
        _check_ignored(output_grad, mask, f"loss_mask_{which.lower()}", which)
        return None if bool(mask.all()) else mask
    counted = _not_ignored(loss_fn, outputs, targets, output_grad, which, ignore_index)
    _refuse_unread_positions(loss_fn, outputs, targets, output_grad, counted, which)
    return counted


def counts_nothing(loss_fn: Any, targets: Any, ignore_index: IgnoreIndex = "auto", loss_mask: Tensor | None = None) -> bool:
    """Whether every target of the batch is ignored (a data-parallel shard of nothing but padding): it
    has no units, and its loss is undefined on its own."""
    if loss_mask is not None:
        return not bool(loss_mask.any())
    if ignore_index is None or not isinstance(targets, Tensor) or targets.is_floating_point() or not targets.numel():
        return False
    declared = declared_ignore_index(loss_fn)
    value = (DEFAULT_IGNORE_INDEX if declared is None else declared) if ignore_index == "auto" else ignore_index
    return bool(torch.eq(targets, value).all())


def _not_ignored(loss_fn: Any, outputs: Tensor, targets: Any, output_grad: Tensor, which: str,
                 ignore_index: IgnoreIndex) -> Tensor | None:
    """The positions whose target is not ignored (see :func:`counted_positions`), or None: all."""
    if ignore_index is None or not isinstance(targets, Tensor) or targets.is_floating_point():
        return None
    if ignore_index == "auto":
        explicit, declared = False, declared_ignore_index(loss_fn)
        value = DEFAULT_IGNORE_INDEX if declared is None else declared
    else:
        explicit, value = True, ignore_index
    if not _is_prefix(targets.shape, outputs.shape):
        if explicit or _ignores_unaligned(output_grad, targets, value):
            raise ValueError(
                f"batch {which}: targets of shape {tuple(targets.shape)} do not line up with outputs of shape "
                f"{tuple(outputs.shape)} (their shape must be a prefix of the outputs'), so the positions whose "
                f"target is {value} cannot be left out of the outputs; return the outputs with positions leading "
                "and classes last, e.g. (batch, tokens, classes), and let the loss move the class dimension "
                "(F.cross_entropy(outputs.transpose(1, 2), targets)); or pass loss_mask_a / loss_mask_b over "
                "the outputs' leading dims"
            )
        return None
    ignored = torch.eq(targets, value)
    if not bool(ignored.any()):
        return None
    zero_grad = _position_grads(output_grad, targets.shape).eq(0).all(dim=-1)
    if explicit:
        _check_ignored(output_grad, ~ignored, f"ignore_index={value}", which)
    else:
        ignored = ignored & zero_grad  # a loss that uses these targets counts them
        if not bool(ignored.any()):
            return None
    return ~ignored


def _refuse_unread_positions(loss_fn: Any, outputs: Tensor, targets: Any, output_grad: Tensor,
                             counted: Tensor | None, which: str) -> None:
    """An output the loss never reads is not part of f (``lnp-math.md`` §9): refuse to count it.

    A position (an entry of the targets, which line up with the outputs' leading dims) whose loss
    gradient is zero for every sample of the batch, and whose target is not ignored, is a suspect;
    it is unread if the gradient stays zero there at generic outputs too (read positions get a
    nonzero gradient almost everywhere). Checking suspects only keeps the common case free.
    """
    if not isinstance(targets, Tensor) or targets.dim() == 0 or not _is_prefix(targets.shape, outputs.shape):
        return
    suspects = _position_grads(output_grad, targets.shape).eq(0).all(dim=-1).all(dim=0)
    if counted is not None:
        suspects &= counted.any(dim=0)
    if not bool(suspects.any()):
        return
    zero_anyway = _zero_at_generic_outputs(loss_fn, outputs, targets)
    unread = suspects if zero_anyway is None else suspects & zero_anyway.all(dim=0)
    if not bool(unread.any()):
        return
    where = [tuple(index) for index in unread.nonzero().tolist()][:5]
    positions = ", ".join(str(p[0]) if len(p) == 1 else str(p) for p in where) or "of the samples"
    confirmed = ("their loss gradient is zero for every sample whatever the outputs" if zero_anyway is not None else
                 "their loss gradient is zero for every sample, and the loss cannot be evaluated elsewhere to tell "
                 "whether it reads them")
    raise ValueError(
        f"batch {which}: the loss never reads the outputs at position {positions} ({confirmed}, and their targets "
        "are not ignored), so they are not part of the measured function, but N and the unit count m would count "
        "them. A loss that shifts inside (full logits against labels = input_ids, as in Hugging Face models) "
        "compares position t with label t + 1 and never reads the last position: return logits[:, :-1] and pass "
        "labels[:, 1:] as the targets (specreach.integrations.transformers.CausalLMLogits and next_token_loss do "
        "this), or pass loss_mask_a / loss_mask_b marking the positions the loss reads"
    )


def _zero_at_generic_outputs(loss_fn: Any, outputs: Tensor, targets: Tensor) -> Tensor | None:
    """Per sample and position, whether the loss gradient is zero at two generic points (standard
    normal outputs, and the outputs slightly perturbed, for losses defined on a range only);
    None if the loss can be evaluated at neither."""
    generator = torch.Generator(device=outputs.device).manual_seed(0)
    base = outputs.detach()
    points = (lambda: torch.randn(base.shape, generator=generator, device=base.device, dtype=base.dtype),
              lambda: base * (1 + 1e-2 * torch.randn(base.shape, generator=generator, device=base.device, dtype=base.dtype)))
    zero = None
    for point in points:
        values = point().requires_grad_(True)
        try:
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(loss_fn(values, targets), values)
        except (RuntimeError, ValueError):
            continue
        if not bool(torch.isfinite(grad).all()):
            continue
        here = _position_grads(grad, targets.shape).eq(0).all(dim=-1)
        zero = here if zero is None else zero & here
    return zero


def _ignores_unaligned(output_grad: Tensor, targets: Tensor, value: int) -> bool:
    """Whether targets that do not line up with the outputs hold positions the loss ignores.

    PyTorch's cross-entropy layout, classes in dim 1 ((batch, classes, tokens), a segmentation's
    (batch, classes, H, W)), is checked through the loss gradient; any other layout holding the
    ignore value is taken to be ignored, since it cannot be checked.
    """
    ignored = torch.eq(targets, value)
    if not bool(ignored.any()):
        return False
    if output_grad.dim() >= 2 and tuple(targets.shape) == (output_grad.shape[0], *output_grad.shape[2:]):
        zero_grad = output_grad.movedim(1, -1).eq(0).all(dim=-1)
        return bool((ignored & zero_grad).any())
    return True


def units_of(loss_fn: Any, outputs: Tensor, targets: Any, mask: Tensor | None, batch_size: int) -> int:
    """m: the counted positions; by default one per target element (samples, or tokens).

    Targets of the outputs' own shape (class probabilities, regression targets) have one element
    per output: each is a unit of an elementwise loss (MSE, BCE), but a cross-entropy or KL loss
    over class probabilities takes one term per distribution, as it does with class indices. The
    loss itself tells which: the elements its second derivative couples to an output element form
    one unit.
    """
    if mask is not None:
        return int(mask.sum())
    if not isinstance(targets, Tensor):
        return batch_size
    if targets.shape == outputs.shape and targets.is_floating_point() and targets.numel():
        return targets.numel() // _elements_per_unit(loss_fn, outputs, targets)
    return targets.numel()


def _elements_per_unit(loss_fn: Any, outputs: Tensor, targets: Tensor) -> int:
    """How many output elements the loss couples to the first one (1 for an elementwise loss).

    Asked at generic outputs (standard normal, not the model's, whose softmax may underflow to
    exact zeros) of the first sample's shape; the coupling is a property of the loss."""
    generator = torch.Generator(device=outputs.device).manual_seed(0)
    first = torch.randn(outputs[:1].shape, generator=generator, device=outputs.device, dtype=outputs.dtype)
    first.requires_grad_(True)
    with torch.enable_grad():
        try:
            (grad,) = torch.autograd.grad(loss_fn(first, targets[:1]), first, create_graph=True)
            if not grad.requires_grad:  # piecewise linear (L1): no second derivative to couple anything
                return 1
            unit = torch.zeros_like(first)
            unit.view(-1)[0] = 1.0
            (coupled,) = torch.autograd.grad((grad * unit).sum(), first, allow_unused=True)
        except RuntimeError:  # no double backward: count elements
            return 1
    if coupled is None or not bool(torch.isfinite(coupled).all()):  # no (finite) second derivative there
        return 1
    count = int((coupled != 0).sum())
    return count if count > 1 and targets[:1].numel() % count == 0 else 1


def check_loss(loss_fn: Any, outputs: Tensor, targets: Any, which: str,
               params: Mapping[str, nn.Parameter] | None = None) -> None:
    """The loss must be a mean over samples of terms that reach θ only through the outputs.

    The same samples twice must give the same loss (a summed loss doubles); and no parameter may
    get a gradient from the loss directly (a weight penalty adds a gradient that is not Jᵀg, so D
    would not be g_Bᵀ Θ g_A). Checked on (at most) two samples: tiny evaluations of the loss alone.
    """
    if not isinstance(targets, Tensor) or targets.dim() == 0 or targets.shape[0] != outputs.shape[0]:
        return
    few_outputs, few_targets = outputs[:2].detach().requires_grad_(True), targets[:2]
    with torch.enable_grad():
        once = loss_fn(few_outputs, few_targets)
        if not isinstance(once, Tensor) or once.dim() != 0:
            shape = tuple(once.shape) if isinstance(once, Tensor) else type(once).__name__
            raise ValueError(f"loss_fn must return a scalar (mean-reduced) loss; on batch {which} it returned "
                             f"{shape} for two samples. Use reduction='mean'.")
        direct = torch.autograd.grad(once, list((params or {}).values()), allow_unused=True) if (
            params and once.requires_grad) else []
    used = [name for name, grad in zip(params or {}, direct) if grad is not None]
    if used:
        raise ValueError(
            f"loss_fn uses the parameters {used[:3]} directly (e.g. a weight penalty), not only through the "
            "model's outputs; the LNP decomposition is of the data loss. Measure the loss without the penalty "
            "(weight decay belongs in the optimizer)."
        )
    with torch.no_grad():
        once = float(once)
        twice = float(loss_fn(torch.cat([few_outputs, few_outputs]), torch.cat([few_targets, few_targets])))
    if not math.isfinite(once) or once == 0:
        return  # e.g. every position of these samples ignored: nothing to compare
    ratio = twice / once
    if abs(ratio - 1) <= 1e-3:
        return
    if abs(ratio - 2) <= 1e-3:
        raise ValueError(
            f"loss_fn sums over samples (on batch {which}, the same samples twice give twice the loss); the LNP "
            "components are defined for a mean-reduced loss L = (1/m) Σ_u ℓ_u. Use reduction='mean' (or divide "
            "by the number of units)."
        )
    raise ValueError(
        f"loss_fn is not a mean over samples (on batch {which}, the same samples twice change the loss by "
        f"×{ratio:.4g}); the LNP components need L = (1/m) Σ_u ℓ_u with each term depending on one sample. "
        "Leave regularizers and batch-level terms out of the measured loss."
    )


def mask_outputs(values: Tensor, mask: Tensor | None) -> Tensor:
    """``values`` (batch-first, positions leading) with the uncounted positions zeroed."""
    if mask is None:
        return values
    return values * mask.reshape(*mask.shape, *([1] * (values.dim() - mask.dim()))).to(values.dtype)


def _is_prefix(prefix: torch.Size, shape: torch.Size) -> bool:
    return len(prefix) <= len(shape) and tuple(shape[:len(prefix)]) == tuple(prefix)


def _aligned(mask: Tensor, outputs: Tensor, name: str) -> Tensor:
    if not _is_prefix(mask.shape, outputs.shape):
        raise ValueError(f"{name} has shape {tuple(mask.shape)}; it must cover the outputs' leading dims "
                         f"(outputs have shape {tuple(outputs.shape)})")
    return mask.to(outputs.device)


def _position_grads(output_grad: Tensor, position_shape: torch.Size) -> Tensor:
    return output_grad.reshape(*position_shape, -1)


def _check_ignored(output_grad: Tensor, counted: Tensor, what: str, which: str) -> None:
    """Positions left out of N must be left out of the loss too, or D and N measure different outputs."""
    grads = _position_grads(output_grad, counted.shape)
    used = (~counted) & grads.ne(0).any(dim=-1)
    if bool(used.any()):
        raise ValueError(
            f"batch {which}: {int(used.sum())} positions excluded by {what} still have a nonzero loss gradient, "
            "so the loss does not ignore them; exclude exactly the positions the loss ignores"
        )
