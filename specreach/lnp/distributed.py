"""The global batch of a data-parallel step (``lnp-math.md`` §9).

With R ranks each holding a shard of batch A (and of B), the LNP components are those of the
concatenated batches, on every rank. Each rank measures its shard, and :class:`Ranks` combines what
the shards contribute through ``torch.distributed`` (gloo on CPUs, NCCL on GPUs: the backend is the
only difference):

- sums over samples — per-sample probe values, χ_net's closed-form shares, unit counts m — are summed
  (per-probe values are gathered, so the standard error is the global one);
- losses are means over their units: L = Σ_r m_r L_r / m, and the loss gradient of a sample in the
  global batch is the shard's scaled by m_r / m, so χ_loss = Σ_r (m_r / m)² χ_loss,r;
- D = ⟨∇L_A, ∇L_B⟩ with ∇L_X = Σ_r (m_r / m) ∇L_X,r: one scalar per rank when A's global gradient is
  known (the training step's, averaged by DDP over even shards), else one all-reduce of A's gradient;
- probes are drawn from a generator per rank (:meth:`Ranks.fork`), independent across ranks.

A refusal or failure on one rank reaches every rank as the same error (:meth:`Ranks.agree`), so no
rank waits in a collective for one that gave up.
"""

from __future__ import annotations

import contextlib
import pickle
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn


class RankFailed(RuntimeError):
    """Another rank's measurement failed with an error that cannot be raised again as itself."""


@dataclass(frozen=True)
class Ranks:
    """The process group a measurement spans (more than one rank)."""

    group: Any  # a torch.distributed ProcessGroup, or None for the default group
    rank: int
    size: int
    device: torch.device  # where collective tensors live: the GPU for NCCL, else the CPU

    @staticmethod
    def of(process_group: Any = "auto") -> "Ranks | None":
        """The ranks to combine over: ``"auto"``, the default group when one with several ranks is
        initialized; a process group; or None (this process's batches alone)."""
        if process_group is None or not (dist.is_available() and dist.is_initialized()):
            return None
        group = None if process_group == "auto" else process_group
        size = dist.get_world_size(group)
        if size < 2:
            return None
        backend = dist.get_backend(group)
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return Ranks(group, dist.get_rank(group), size, device)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over the ranks, in float64."""
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, group=self.group)
        return tensor.tolist()

    def sum_tensor(self, tensor: Tensor) -> Tensor:
        """A tensor summed over the ranks (in place on a copy on the collective device)."""
        reduced = tensor.to(self.device, copy=True)
        dist.all_reduce(reduced, group=self.group)
        return reduced.to(tensor.device)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (small picklable objects), in rank order."""
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value, group=self.group)
        return values

    def fork(self, generator: torch.Generator) -> torch.Generator:
        """A generator of this rank's own: seeded from one draw of ``generator`` and the rank, so probes
        are independent across ranks and reproducible from the caller's seed."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        forked = torch.Generator(device=generator.device)
        forked.manual_seed((seed * 1_000_003 + self.rank) % 2**63)
        return forked

    def agree(self, error: BaseException | None) -> None:
        """Raise on every rank the first error any rank had (None: this rank had none)."""
        failures = self.gather(None if error is None else _portable(error))
        for rank, failure in enumerate(failures):
            if failure is None:
                continue
            if error is not None and rank == self.rank:
                raise error
            kind, message = failure
            raise _rebuilt(kind, f"{message} (on rank {rank} of {self.size})")

    @contextlib.contextmanager
    def agreed(self) -> Iterator[None]:
        """A block every rank finishes together: an error on any rank is raised on all of them."""
        try:
            yield
        except Exception as error:  # noqa: BLE001 - handed to every rank
            self.agree(error)
            raise
        self.agree(None)


def _portable(error: BaseException) -> tuple[type, str]:
    kind = type(error)
    try:
        pickle.dumps(kind)
    except Exception:  # noqa: BLE001 - a class defined in a test function, say
        kind = RuntimeError
    return kind, str(error)


def _rebuilt(kind: type, message: str) -> BaseException:
    try:
        return kind(message)
    except Exception:  # noqa: BLE001 - an exception class whose constructor wants more
        return RankFailed(message)


def unwrap(model: nn.Module) -> nn.Module:
    """The module a data-parallel wrapper holds: DDP's forward would run its reducer on our backwards.
    Fully sharded models are refused: a rank holds a shard of each parameter, and per-sample gradient
    norms need whole parameters."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        model = model.module
    sharded = _sharded(model)
    if sharded:
        raise ValueError(
            f"the model's parameters are sharded across ranks (FSDP; e.g. {sharded[0]}): per-sample gradient norms "
            "need every parameter whole on the rank that measures. Measure a DistributedDataParallel model, or "
            "gather the full model on each rank for the measurement (e.g. a copy built from the full state dict)"
        )
    return model


def _sharded(model: nn.Module) -> list[str]:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a build without distributed tensors cannot shard
        return []
    return [name for name, p in model.named_parameters() if isinstance(p, DTensor)]


def gather_shards(ranks: Ranks, batch: Any, loss_mask: Tensor | None, units: int | None):
    """Every rank's shard of a batch, concatenated in rank order (on this rank's device): for the estimators
    that need a batch whole (the explicit kernel). A loss mask and unit count follow their shards."""
    from torch.utils import _pytree as pytree

    inputs, targets = batch
    device = next((t.device for t in pytree.tree_leaves(batch) if isinstance(t, Tensor)), torch.device("cpu"))
    to_cpu = pytree.tree_map(lambda t: t.detach().cpu() if isinstance(t, Tensor) else t, (inputs, targets, loss_mask))
    shards = ranks.gather(to_cpu)
    counts = ranks.gather(units)

    def joined(*values):
        if not isinstance(values[0], Tensor):
            return values[0]
        if len({tuple(v.shape[1:]) for v in values}) != 1:
            raise ValueError("the ranks' shards of a batch have different shapes beyond the batch dim "
                             f"({sorted({tuple(v.shape) for v in values})}); pad them alike to measure the global batch")
        return torch.cat(values).to(device)

    inputs, targets, mask = pytree.tree_map(joined, *shards) if ranks.size > 1 else shards[0]
    total = None if any(c is None for c in counts) else sum(counts)
    return (inputs, targets), mask, total
