"""Launched by ``torchrun --nproc_per_node 2`` (gloo, CPU): each rank measures its shards of the same
global batches with a DistributedDataParallel model; rank 0 writes every rank's results to OUT (JSON).

The global batches and the model are the same on every rank (seed 0); the shards are uneven in one
case (rank 0 holds 3 samples of A, rank 1 holds 2), and in another one rank's shard is padding alone.
"""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from specreach import measure_lnp, measure_lnp_at_step
from specreach.engine.monitor import LNPMonitor, MonitorConfig
from specreach.engine.sinks import TableSink

COMPONENTS = ("grad_dot", "loss_magnitude", "network_magnitude", "spectral_position", "loss_magnitude_normalized",
              "network_magnitude_normalized", "chi_net_a", "chi_net_b", "chi_loss_a", "chi_loss_b", "loss_a",
              "loss_b", "units_a", "units_b", "chi_net_a_stderr", "chi_net_b_stderr")


def components(result):
    return {name: float(getattr(result, name)) for name in COMPONENTS}


def mlp():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.mix, self.head = nn.Embedding(11, 6), nn.Linear(6, 6), nn.Linear(6, 11)

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def token_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    classifier = mlp()
    x_a, y_a = torch.randn(4, 4), torch.randint(0, 3, (4,))
    x_b, y_b = torch.randn(6, 4), torch.randint(0, 3, (6,))
    lm = TinyLM()
    tokens = torch.randint(0, 11, (4, 6))
    targets = tokens.roll(-1, 1)
    targets[2:, :] = -100  # the second rank's shard is padding alone
    targets[0, 4:] = -100
    lm_b = torch.randint(0, 11, (4, 6))
    results = {}

    even = slice(2 * rank, 2 * rank + 2)  # 2 + 2 samples of A, 3 + 3 of B
    b_shard = slice(3 * rank, 3 * rank + 3)
    ddp = DistributedDataParallel(classifier)
    for estimator in ("exact", "entk"):
        results[f"{estimator}-even"] = components(measure_lnp(
            ddp, F.cross_entropy, (x_a[even], y_a[even]), (x_b[b_shard], y_b[b_shard]), estimator=estimator))
    uneven = slice(0, 3) if rank == 0 else slice(3, 4)
    results["exact-uneven"] = components(measure_lnp(
        ddp, F.cross_entropy, (x_a[uneven], y_a[uneven]), (x_b[b_shard], y_b[b_shard]), estimator="exact"))
    results["exact-full-batch"] = components(measure_lnp(ddp, F.cross_entropy, (x_a[even], y_a[even])))

    # The step's own gradient, averaged by DDP over even shards: reused, D needs one scalar per rank.
    ddp.zero_grad()
    logits = ddp(x_a[even])
    F.cross_entropy(logits, y_a[even]).backward()
    step = measure_lnp_at_step(ddp, F.cross_entropy, (x_a[even], y_a[even]), (x_b[b_shard], y_b[b_shard]),
                               grad_a=[p.grad for p in ddp.parameters()], outputs_a=logits)
    results["exact-step"] = {**components(step), "reused": step.step_gradient_reused}

    results["hutchinson-probes"] = [components(measure_lnp(
        ddp, F.cross_entropy, (x_a[even], y_a[even]), (x_b[b_shard], y_b[b_shard]), estimator="hutchinson",
        probes=4, generator=torch.Generator().manual_seed(seed))) for seed in range(20)]

    lm_ddp = DistributedDataParallel(lm)
    results["lm-padding-shard"] = components(measure_lnp(
        lm_ddp, token_loss, (tokens[even], targets[even]), (lm_b[even], lm_b[even].roll(-1, 1)), estimator="exact"))

    # A refusal on one rank only (its shard's loss reads only some positions) reaches both as one error.
    try:
        shifted = (lambda logits, labels: token_loss(logits[:, :-1], labels[:, 1:])) if rank == 1 else token_loss
        measure_lnp(lm_ddp, shifted, (tokens[even], tokens[even]), estimator="exact", verify=False)
        results["refusal"] = None
    except ValueError as error:
        results["refusal"] = [type(error).__name__, str(error)]

    # LNPMonitor in a DDP loop: only rank 0 writes rows.
    monitor = LNPMonitor(ddp, F.cross_entropy, (x_b, y_b), MonitorConfig(total_steps=2, estimator="exact",
                                                                         schedule=[0, 1], batch_size=3),
                         sink=TableSink(f"{out}.rank{rank}.csv"))
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for step_index in range(2):
        optimizer.zero_grad()
        logits = ddp(x_a[even])
        loss = F.cross_entropy(logits, y_a[even])
        loss.backward()
        monitor.step(step_index, (x_a[even], y_a[even]), loss, outputs=logits, lr=0.1)
        optimizer.step()
        monitor.after_update()
    monitor.close()

    everything = [None] * size
    dist.all_gather_object(everything, results)
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(everything, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
