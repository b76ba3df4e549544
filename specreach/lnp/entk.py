"""The ``entk`` estimator: build the Jacobians and the empirical NTK explicitly.

J_X = ∂F_X/∂θ comes from ``torch.func.jacrev``; Θ_XY = J_X J_Yᵀ is formed in float64 and
every component is read off the kernel: D = g_Bᵀ Θ_BA g_A, χ_net,X = Tr Θ_XX. With B = A it
also returns the spectrum λ_k of Θ and the projections c_k = (v_kᵀ g)²/‖g‖² of the loss
gradient (mode-resolved P, paper Appendix D.5), with P = Σ_k c_k λ_k / Σ_j λ_j.

This is the ground truth the other estimators are tested against, and only for small
problems: J has (n·d) × p entries. A problem that would not fit is refused up front.

Rows of J are the counted output coordinates: positions whose targets the loss ignores are left
out (``lnp-math.md`` §8), and ``positions`` / ``output_indices`` restrict every sample's outputs
to a subset (paper, Appendix D.5: a set of vocabulary indices × token positions), so that the
kernel, g, D, L, N and P are those of the restricted outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from specreach.params.estimators import EntkParams
from specreach.lnp.estimator import Estimator
from specreach.lnp.layer_rules import functional_call_context
from specreach.lnp.per_sample_norms import group_of
from specreach.lnp.problem import Batch, BatchOutputs, MeasurementProblem, batch_outputs, forward
from specreach.lnp.result import ChiNet, LNPResult, assemble_result


@dataclass(frozen=True)
class Linearization:
    """A batch's flattened outputs' Jacobian J (float64, (n·d) × p) and loss gradient g (n·d)."""

    jacobian: Tensor
    output_grad: Tensor
    columns: dict[str, slice]  # parameter name -> its columns of J
    loss: float
    units: int  # m of the batch


def entk_memory_bytes(rows_a: int, rows_b: int, num_params: int, itemsize: int) -> int:
    """Jacobians in the model's dtype and in float64, plus the kernels in float64."""
    rows = rows_a + rows_b
    return rows * num_params * (itemsize + 8) + (rows_a * rows_a + rows_a * rows_b) * 8


def linearize(problem: MeasurementProblem, batch: Batch, measured: BatchOutputs, rows: Tensor,
              chunk_size: int | None) -> Linearization:
    """J and g of one batch over the output coordinates ``rows`` (indices into the flat outputs)."""
    names = list(problem.params)
    # torch.func differentiates real inputs only: a complex parameter goes in as its real view, whose
    # two real coordinates per entry are the ones its Jacobian columns have (lnp-math §9).
    complex_params = {name for name, p in problem.params.items() if p.is_complex()}
    values = tuple(torch.view_as_real(p.detach()) if name in complex_params else p.detach()
                   for name, p in problem.params.items())
    args, kwargs = _as_call(batch.inputs)

    def flat_outputs(*param_values: Tensor) -> Tensor:
        params = {name: torch.view_as_complex(value) if name in complex_params else value
                  for name, value in zip(names, param_values)}
        outputs = torch.func.functional_call(problem.model, params, args, kwargs)
        return outputs.reshape(-1)[rows]

    output_grad = measured.output_grad.reshape(-1)[rows].double()
    try:
        with functional_call_context(problem.model):
            jacobians = torch.func.jacrev(flat_outputs, argnums=tuple(range(len(values))), chunk_size=chunk_size)(*values)
    except RuntimeError as error:
        raise ValueError(
            f"the explicit eNTK (torch.func.jacrev over the parameters) cannot differentiate this model: {error}\n"
            "Custom autograd.Functions need torch.func support (setup_context, vmap), and activation "
            "checkpointing (torch.utils.checkpoint, saved-tensor hooks) must be off. Otherwise measure with "
            "estimator='exact' or 'hutchinson'."
        ) from error
    blocks = [j.reshape(rows.numel(), -1).double() for j in jacobians]
    columns, start = {}, 0
    for name, block in zip(names, blocks):
        columns[name] = slice(start, start + block.shape[1])
        start += block.shape[1]
    return Linearization(torch.cat(blocks, dim=1), output_grad, columns, measured.loss, measured.units)


def selected_rows(outputs: Tensor, mask: Tensor | None, params: EntkParams) -> Tensor:
    """Flat indices of the output coordinates that are rows of J: counted, and in the subset asked for."""
    keep = torch.ones(outputs.shape, dtype=torch.bool, device=outputs.device)
    if mask is not None:
        keep &= mask.reshape(*mask.shape, *([1] * (outputs.dim() - mask.dim())))
    if params.positions is not None:
        if outputs.dim() < 3:
            raise ValueError(f"entk positions= needs outputs with a position dim (batch, positions, ...); these "
                             f"have shape {tuple(outputs.shape)}")
        keep &= _index_mask(outputs.shape[1], params.positions, "positions", outputs.device).reshape(1, -1, *[1] * (outputs.dim() - 2))
    if params.output_indices is not None:
        keep &= _index_mask(outputs.shape[-1], params.output_indices, "output_indices", outputs.device)
    return keep.reshape(-1).nonzero().squeeze(1)


def _index_mask(size: int, indices: list[int], what: str, device) -> Tensor:
    bad = [i for i in indices if not -size <= i < size]
    if bad:
        raise ValueError(f"entk {what}={bad} out of range for a dim of size {size}")
    chosen = torch.zeros(size, dtype=torch.bool, device=device)
    chosen[torch.tensor(indices, dtype=torch.long, device=device)] = True
    return chosen


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def _as_call(inputs) -> tuple[tuple, dict]:
    if isinstance(inputs, dict):
        return (), dict(inputs)
    return (tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)), {}


def chi_net_of(lin: Linearization) -> ChiNet:
    by_group: dict[str, float] = {}
    for name, cols in lin.columns.items():
        by_group[group_of(name)] = by_group.get(group_of(name), 0.0) + float(lin.jacobian[:, cols].square().sum())
    return ChiNet(float(lin.jacobian.square().sum()), by_group=by_group)


class Entk(Estimator):
    name = "entk"
    Params = EntkParams

    def check_memory(self, problem: MeasurementProblem, rows_a: int, rows_b: int) -> None:
        num_params = sum(p.numel() for p in problem.params.values())
        itemsize = next(iter(problem.params.values())).element_size()
        needed = entk_memory_bytes(rows_a, rows_b, num_params, itemsize)
        if needed > self.params.max_memory_gb * 2**30:
            raise ValueError(
                f"estimator 'entk' would build Jacobians of {rows_a + rows_b} output rows × {num_params} parameters "
                f"and a {rows_a} × {rows_a + rows_b} kernel: about {human_bytes(needed)}, over max_memory_gb="
                f"{self.params.max_memory_gb:g}. Use estimator='exact' or 'hutchinson', a smaller batch, "
                "or raise max_memory_gb."
            )

    def kernel_problem(self, problem: MeasurementProblem) -> tuple[Linearization, Linearization]:
        """Check the size, then linearize A and B (the same object twice for a full batch)."""
        batches = [(problem.batch_a, "A")]
        if problem.batch_b is not None:
            batches.append((problem.batch_b, "B"))
        measured, rows = [], []
        for batch, which in batches:
            with torch.no_grad():
                outputs = forward(problem.model, batch.inputs, which)
            measured.append(batch_outputs(problem, batch, outputs, which))
            rows.append(selected_rows(outputs, measured[-1].mask, self.params))
        self.check_memory(problem, rows[0].numel(), rows[1].numel() if len(rows) > 1 else 0)
        lins = [linearize(problem, batch, m, r, self.params.chunk_size)
                for (batch, _), m, r in zip(batches, measured, rows)]
        return lins[0], lins[-1]

    def measure(self, problem: MeasurementProblem) -> LNPResult:
        lin_a, lin_b = self.kernel_problem(problem)
        return self.result_from(problem, lin_a, lin_b)

    def result_from(self, problem: MeasurementProblem, lin_a: Linearization, lin_b: Linearization) -> LNPResult:
        """Every component from the two linearizations (plugins that extend ``entk`` reuse this)."""
        kernel_ba = lin_b.jacobian @ lin_a.jacobian.T  # Θ_BA
        grad_dot = float(lin_b.output_grad @ kernel_ba @ lin_a.output_grad)
        eigenvalues = projections = None
        if problem.full_batch:
            eigenvalues, projections = spectrum(kernel_ba, lin_a.output_grad)
        chi_net_a = chi_net_of(lin_a)
        return assemble_result(
            estimator=self.name,
            probes=None,
            grad_dot=grad_dot,
            loss_a=lin_a.loss,
            loss_b=lin_b.loss,
            chi_loss_a=float(lin_a.output_grad.square().sum()),
            chi_loss_b=float(lin_b.output_grad.square().sum()),
            chi_net_a=chi_net_a,
            chi_net_b=chi_net_a if problem.full_batch else chi_net_of(lin_b),
            units_a=lin_a.units,
            units_b=lin_b.units,
            full_batch=problem.full_batch,
            arrays={} if eigenvalues is None or projections is None else {
                "eigenvalues": eigenvalues, "projections": projections},
        )


def spectrum(kernel: Tensor, output_grad: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Eigenvalues λ_k (descending) of a symmetric PSD kernel and c_k = (v_kᵀ g)² / ‖g‖²."""
    eigenvalues, eigenvectors = torch.linalg.eigh(kernel)
    order = torch.argsort(eigenvalues, descending=True)
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    grad_norm_sq = output_grad.square().sum()
    projections = (eigenvectors.T @ output_grad).square() / grad_norm_sq if grad_norm_sq > 0 else torch.full_like(eigenvalues, float("nan"))
    return tuple(eigenvalues.tolist()), tuple(projections.tolist())
