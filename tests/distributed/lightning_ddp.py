"""Run as a plain script: Lightning's ``Trainer(strategy="ddp", accelerator="cpu", devices=2)`` starts the
second process itself (gloo). ``LNPCallback`` logs to a CSV table (rank 0 writes it); the script also keeps,
on rank 0, what one process needs to measure each logged step again: the weights before the update and
the global batches A (both ranks' shards, gathered) and B."""

import sys

import lightning
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from specreach.engine.sinks import TableSink
from specreach.integrations.lightning import LNPCallback


class Classifier(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recording(LNPCallback):
    """Keeps (weights, global A, global B) of every measured step on rank 0."""

    kept: list = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        if self.monitor.should_measure(trainer.global_step):
            shards = [None] * dist.get_world_size()
            dist.all_gather_object(shards, self._batch)
            a = tuple(torch.cat([shard[i] for shard in shards]) for i in range(2))
            if dist.get_rank() == 0:
                self.kept.append({"step": trainer.global_step, "weights": {k: v.clone() for k, v in
                                                                           pl_module.state_dict().items()},
                                  "a": a, "b": self.monitor._global_b})


def main(out: str) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    pool = (torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,)))
    callback = Recording(F.cross_entropy, pool, sinks=TableSink(f"{out}.csv"), estimator="exact", schedule=[0, 2],
                         batch_size=3)
    trainer = lightning.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=3, precision="64-true",
                                callbacks=[callback], logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    trainer.fit(Classifier(), DataLoader(TensorDataset(x, y), batch_size=2))
    if trainer.global_rank == 0:
        torch.save(callback.kept, f"{out}.kept.pt")


if __name__ == "__main__":
    main(sys.argv[1])
