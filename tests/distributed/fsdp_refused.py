"""Launched by ``torchrun --nproc_per_node 2`` (gloo): a model sharded with ``fully_shard`` (FSDP2) is refused
on every rank with the reason and what to use instead; rank 0 writes each rank's message to OUT."""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.fsdp import fully_shard

from specreach import measure_lnp


def main(out: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    fully_shard(model)
    try:
        measure_lnp(model, F.cross_entropy, (torch.randn(2, 4), torch.randint(0, 3, (2,))))
        message = None
    except ValueError as error:
        message = str(error)
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    if dist.get_rank() == 0:
        with open(out, "w") as handle:
            json.dump(messages, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
