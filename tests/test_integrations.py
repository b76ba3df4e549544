"""Real fits: a tiny Lightning ``Trainer.fit`` and a tiny Hugging Face ``Trainer.train`` with the
LNP callbacks. Each measured P must equal ``measure_lnp`` on the same weights and batches."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from specreach import measure_lnp
from specreach.engine.sinks import Sink

lightning = pytest.importorskip("lightning")
transformers = pytest.importorskip("transformers")

from specreach.integrations.lightning import LNPCallback  # noqa: E402
from specreach.integrations.transformers import LNPTrainerCallback, next_token_loss  # noqa: E402


class Rows(Sink):
    def __init__(self):
        self.rows = []

    def write(self, row):
        self.rows.append(dict(row))


class Classifier(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SnapshotLightning(LNPCallback):
    """Keeps the weights and batches of every measurement, to measure them again afterwards."""

    snapshots: list

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        super().on_before_optimizer_step(trainer, pl_module, optimizer)
        if self.monitor.should_measure(trainer.global_step):
            self.snapshots.append((copy.deepcopy(pl_module.state_dict()), self._batch, self.monitor._batch_b,
                                   self.monitor.last_result))


def test_lightning_callback_measures_what_measure_lnp_measures(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    pool = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    rows = Rows()
    callback = SnapshotLightning(F.cross_entropy, pool, sinks=[rows], estimator="exact", schedule=[0, 2, 5])
    callback.snapshots = []
    module = Classifier()
    trainer = lightning.Trainer(max_steps=6, callbacks=[callback], logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                                default_root_dir=tmp_path)
    trainer.fit(module, loader)
    assert [s for s in (r["step"] for r in rows.rows if "spectral_position" in r)] == [0, 2, 5]
    assert len(callback.snapshots) == 3
    fresh = Classifier()
    for state, batch_a, batch_b, result in callback.snapshots:
        fresh.load_state_dict(state)
        again = measure_lnp(fresh, F.cross_entropy, batch_a, batch_b, estimator="exact")
        assert result.spectral_position == pytest.approx(again.spectral_position, rel=1e-5)
        assert result.network_magnitude == pytest.approx(again.network_magnitude, rel=1e-5)
        assert not result.step_gradient_reused  # dropout was active in the step: recomputed


def tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=23, n_positions=8, n_embd=8, n_layer=1, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config)


class TokenData(torch.utils.data.Dataset):
    def __init__(self, tokens):
        self.tokens = tokens

    def __len__(self):
        return self.tokens.shape[0]

    def __getitem__(self, index):
        ids = self.tokens[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class SnapshotTrainer(LNPTrainerCallback):
    snapshots: list

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        before = self.monitor.last_result
        super().on_pre_optimizer_step(args, state, control, **kwargs)
        if self.monitor.last_result is not before:
            self.snapshots.append((copy.deepcopy(self.measured.model.state_dict()), self.last_batch,
                                   self.monitor._batch_b, self.monitor.last_result))


def test_transformers_callback_measures_what_measure_lnp_measures(tmp_path):
    torch.manual_seed(0)
    tokens = torch.randint(0, 23, (24, 8))
    pool_ids = torch.randint(0, 23, (12, 8))
    pool_labels = pool_ids.clone()
    pool_labels[:, -2:] = -100  # padding in the pool: those positions are not samples
    pool = {"input_ids": pool_ids, "attention_mask": torch.ones_like(pool_ids), "labels": pool_labels}
    rows = Rows()
    # No batch_size: B takes the size of batch A, a mapping of tensors (as documented, in docs/training-loop.md).
    callback = SnapshotTrainer(pool, sinks=[rows], estimator="hutchinson", probes=4, schedule=[0, 3])
    callback.snapshots = []
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                                          learning_rate=1e-2, report_to=[], save_strategy="no", logging_steps=100,
                                          use_cpu=True, max_grad_norm=1.0, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=tiny_gpt2(), args=args, train_dataset=TokenData(tokens),
                                   callbacks=[callback])
    trainer.train()
    assert [r["step"] for r in rows.rows if "spectral_position" in r] == [0, 3]
    assert [e["step"] for e in trainer.state.log_history if "lnp/spectral_position" in e] == [0, 3]
    fresh = tiny_gpt2()
    from specreach.integrations.transformers import CausalLMLogits
    for state, batch_a, batch_b, result in callback.snapshots:
        fresh.load_state_dict(state)
        again = measure_lnp(CausalLMLogits(fresh), next_token_loss, batch_a, batch_b, estimator="exact")
        assert result.grad_dot == pytest.approx(again.grad_dot, rel=1e-5)
        assert result.units_b == int((batch_b[1] != -100).sum())  # padding labels are not samples
        assert batch_b[1].shape[0] == batch_a[1].shape[0] == 4  # B as large as A
        # Hutchinson with 4 probes: within its reported error of the exact N.
        assert abs(result.network_magnitude - again.network_magnitude) < 4 * result.network_magnitude_stderr


def test_gpt2_per_sample_norms_agree_with_plain_autograd(float64):
    """Hugging Face GPT-2: Conv1D layers, a tied head, position embeddings of shape (1, T, d)."""
    from specreach.integrations.transformers import CausalLMLogits
    from specreach.lnp.verify import verify_model

    torch.manual_seed(0)
    model = CausalLMLogits(tiny_gpt2())
    ids = torch.randint(0, 23, (3, 8))
    labels = ids[:, 1:].clone()
    labels[0, -2:] = -100
    report = verify_model(model, next_token_loss, ({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, labels))
    assert report.ok, report.describe()
    paths = measure_lnp(model, next_token_loss, ({"input_ids": ids}, labels)).paths
    assert paths["model.transformer.wpe.weight"].startswith("op rules: broadcast (add in 'model.transformer')")
