"""Launched by ``torchrun --nproc_per_node 2`` (CPU, gloo): the Hugging Face ``Trainer`` trains a tiny GPT-2
data-parallel with ``LNPTrainerCallback`` logging to a CSV table (rank 0 writes it). Rank 0 also keeps what
one process needs to measure each logged step again: the weights before the update and the global
batches A (both ranks' shards, gathered) and B."""

import sys

import torch
import torch.distributed as dist
import transformers

from specreach.engine.sinks import TableSink
from specreach.integrations.transformers import LNPTrainerCallback

VOCAB, TOKENS = 16, 6


def tiny_gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=TOKENS, n_embd=8, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config).double()


class Recording(LNPTrainerCallback):
    kept: list = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        measured = self._inputs is not None and self.monitor.should_measure(state.global_step)
        weights = {k: v.detach().clone() for k, v in self.measured.model.state_dict().items()} if measured else None
        super().on_pre_optimizer_step(args, state, control, **kwargs)
        if measured:
            shards = [None] * dist.get_world_size()
            dist.all_gather_object(shards, self.last_batch)
            a = ({key: torch.cat([shard[0][key] for shard in shards]) for key in shards[0][0]},
                 torch.cat([shard[1] for shard in shards]))
            if dist.get_rank() == 0:
                self.kept.append({"step": state.global_step, "weights": weights, "a": a, "b": self.monitor._global_b})


def main(out: str) -> None:
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (16, TOKENS))
    train = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row} for row in ids]
    pool_ids = torch.randint(0, VOCAB, (8, TOKENS))
    pool = {"input_ids": pool_ids, "attention_mask": torch.ones_like(pool_ids), "labels": pool_ids}
    callback = Recording(pool, sinks=TableSink(f"{out}.csv"), estimator="exact", schedule=[0, 1], batch_size=2)
    args = transformers.TrainingArguments(output_dir=f"{out}.trainer", max_steps=2, per_device_train_batch_size=2,
                                          learning_rate=0.05, use_cpu=True, report_to=[], save_strategy="no",
                                          logging_strategy="no", seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=train, callbacks=[callback])
    trainer.train()
    if dist.get_rank() == 0:
        torch.save(callback.kept, f"{out}.kept.pt")


if __name__ == "__main__":
    main(sys.argv[1])
