"""Models people bring, each built to hit one way a parameter escapes module hooks.

Every case returns ``(model, loss_fn, batch_a, batch_b, mask_a, mask_b)``: the masks are the
positions that count (None: all), which the reference needs for models with ignored targets.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
import torch.nn.utils.parametrize  # noqa: F401  (weight_norm below needs it registered)
import torch.utils.checkpoint
from torch import nn

from specreach.models.vit import build_vit

VOCAB, CONTEXT = 13, 5


def token_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _tokens(n, generator=None, low=0):
    return torch.randint(low, VOCAB, (n, CONTEXT), generator=generator)


def _lm_case(model):
    a, b = _tokens(3), _tokens(2)
    return model, token_loss, (a, a.roll(-1, 1)), (b, b.roll(-1, 1)), None, None


class NanoGPTTied(nn.Module):
    """nanoGPT's shape: token + position embeddings, a block, and a head tied functionally."""

    def __init__(self, hidden=6):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, hidden)
        self.wpe = nn.Embedding(CONTEXT, hidden)
        self.block = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.Tanh())
        self.ln_f = nn.LayerNorm(hidden)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        h = self.wte(tokens) + self.wpe(positions)
        h = h + self.block(h)
        return self.ln_f(h) @ self.wte.weight.T


class ModuleTiedLM(nn.Module):
    """Hugging Face's shape: ``lm_head.weight`` is the embedding's Parameter."""

    def __init__(self, hidden=6):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden)
        self.mix = nn.Linear(hidden, hidden)
        self.lm_head = nn.Linear(hidden, VOCAB, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens):
        return self.lm_head(torch.tanh(self.mix(self.embed(tokens))))


class TiedAutoencoder(nn.Module):
    """Decoder = the encoder's weight transposed, through ``F.linear``; a root-owned bias."""

    def __init__(self, inputs=7, code=3):
        super().__init__()
        self.encoder = nn.Linear(inputs, code)
        self.decoder_bias = nn.Parameter(torch.randn(inputs) * 0.1)

    def forward(self, x):
        return F.linear(torch.tanh(self.encoder(x)), self.encoder.weight.t(), self.decoder_bias)


class RootScaleWideReadout(nn.Module):
    """A root-owned ``gamma`` below a widening readout (d_in 3 < d_out 7)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.gamma = nn.Parameter(torch.randn(3))
        self.readout = nn.Linear(3, 7)

    def forward(self, x):
        return self.readout(torch.tanh(self.body(x)) * self.gamma)


class PaddedLM(nn.Module):
    def __init__(self, hidden=5):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, hidden, padding_idx=0)
        self.mix = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


class CheckpointedMLP(nn.Module):
    """Activation checkpointing (``torch.utils.checkpoint``) around the middle block."""

    def __init__(self, use_reentrant=False):
        super().__init__()
        self.first = nn.Linear(4, 6)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 6))
        self.head = nn.Linear(6, 3)
        self.use_reentrant = use_reentrant

    def forward(self, x):
        h = torch.tanh(self.first(x))
        return self.head(torch.utils.checkpoint.checkpoint(self.block, h, use_reentrant=self.use_reentrant))


class RecurrentLM(nn.Module):
    """An LSTM/GRU language model: ``nn.LSTM``'s fused op has no vmap batching rule."""

    def __init__(self, cell, hidden=5):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.rnn = cell(4, hidden, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, tokens):
        return self.head(self.rnn(self.embed(tokens))[0])


class PerSampleBranches(nn.Module):
    """A Python branch on each sample's own data: vmap cannot run it; samples stay independent."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        rows = []
        for row in torch.tanh(self.body(x)):
            rows.append(row * self.scale if row.sum() > 0 else row)
        return self.head(torch.stack(rows))


class HookedMLP(nn.Module):
    """A user's forward hook replaces a layer's output with 2·y + 1."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 6)
        self.second = nn.Linear(6, 3)
        self.first.register_forward_hook(lambda module, args, output: 2 * output + 1)

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


class ForwardBypass(nn.Module):
    """A submodule called through ``.forward()``: no hooks run for it."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.inner.forward(x)))


class WeightNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.hidden = nn.utils.parametrizations.weight_norm(nn.Linear(4, 6))
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


class HookReparametrized(nn.Module):
    """The deprecated hook-based ``nn.utils.spectral_norm``/``weight_norm``: the layer's ``weight`` is a
    plain tensor a pre-hook computes from ``weight_orig`` (or ``weight_g``, ``weight_v``)."""

    def __init__(self, reparametrize):
        super().__init__()
        self.hidden = reparametrize(nn.Linear(4, 6))
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


class WeightAlsoUsedOutside(nn.Module):
    """A layer's weight also used functionally outside it, over more positions than input features:
    the weight takes op rules for both uses, the bias the layer's rule (which must not add the weight)."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(2, 3)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.mix(x) + F.linear(x.flip(1), self.mix.weight)))


class SequenceFirst(nn.Module):
    """Layers applied sequence-first inside (``x.transpose(0, 1)``, shape (T, n, d)), as models written
    for ``nn.MultiheadAttention``'s old default; with T = n the shape alone looks batch-first."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.mix(x.transpose(0, 1))).transpose(0, 1))


class KeywordInputs(nn.Module):
    """Keyword inputs (a dict batch) and a root-owned parameter."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.offset = nn.Parameter(torch.randn(4))
        self.head = nn.Linear(4, 3)

    def forward(self, *, tokens, weights):
        pooled = (self.embed(tokens) * weights.unsqueeze(-1)).sum(1)
        return self.head(torch.tanh(pooled + self.offset))


class AttentionNet(nn.Module):
    """``nn.MultiheadAttention`` uses its ``out_proj`` weights functionally."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, tokens):
        x = self.embed(tokens)
        y, _ = self.attention(x, x, x, need_weights=False)
        return self.head(y.mean(1))


class SharedBlockNet(nn.Module):
    """One block applied twice (weights shared across depth)."""

    def __init__(self):
        super().__init__()
        self.block = nn.Linear(5, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.block(torch.tanh(self.block(x)))))


class UnusedParameters(nn.Module):
    """One parameter never used, one used only after ``.detach()``: both have zero Jacobian."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.spare = nn.Linear(4, 3)
        self.detached_scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.body(x) * self.detached_scale.detach()


class FunctionalOps(nn.Module):
    """Root-owned parameters through functions only: an embedding table with a padding row,
    ``x @ W``, ``torch.sub(..., alpha=0.5)`` and a broadcast product."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(VOCAB, 4))
        self.proj = nn.Parameter(torch.randn(4, 5) * 0.5)
        self.shift = nn.Parameter(torch.randn(5))
        self.scale = nn.Parameter(torch.randn(1, 5))
        self.out = nn.Linear(5, 3)

    def forward(self, tokens):
        h = torch.tanh(F.embedding(tokens, self.table, padding_idx=0) @ self.proj)
        h = torch.sub(h, self.shift, alpha=0.5) * self.scale
        return self.out(h.mean(1))


class FlattenedRows(nn.Module):
    """Layers applied to the batch flattened into rows (``x.reshape(-1, d)``), as OPT's feed-forward."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.norm = nn.LayerNorm(4)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens)
        n, t, d = x.shape
        rows = x.reshape(-1, d)  # a view of the batch: its rows are the samples' positions, in order
        h = (torch.tanh(self.mix(rows)) + self.norm(rows)).reshape(n, t, d)
        return self.head(h + h.mean(1, keepdim=True))  # positions mix: a row's gradient reaches them all


class InterleavedRows(nn.Module):
    """Seq-first rows (``x.transpose(0, 1).reshape(-1, d)``): rows of different samples interleave,
    so no layer rule may group them by sample; the per-sample VJP of the model takes over."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 4)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens)
        n, t, d = x.shape
        rows = torch.tanh(self.mix(x.transpose(0, 1).reshape(-1, d)))
        return self.head(rows.reshape(t, n, d).transpose(0, 1))


class DropoutMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def _classification(model, inputs=4, classes=3, n_a=5, n_b=4):
    a = (torch.randn(n_a, inputs), torch.randint(0, classes, (n_a,)))
    b = (torch.randn(n_b, inputs), torch.randint(0, classes, (n_b,)))
    return model, F.cross_entropy, a, b, None, None


def nanogpt_tied():
    return _lm_case(NanoGPTTied())


def module_tied():
    return _lm_case(ModuleTiedLM())


def tied_autoencoder():
    model = TiedAutoencoder()
    a, b = torch.randn(4, 7), torch.randn(3, 7)
    return model, F.mse_loss, (a, a), (b, b), None, None


def root_scale_wide_readout():
    return _classification(RootScaleWideReadout(), classes=7)


def vit_more_classes_than_width():
    """The project's own ViT builder with 12 classes on a hidden width of 8."""
    model = build_vit(image_size=8, channels=1, patch=4, hidden=8, mlp=16, heads=2, layers=1, classes=12)
    a = (torch.randn(3, 1, 8, 8), torch.randint(0, 12, (3,)))
    b = (torch.randn(2, 1, 8, 8), torch.randint(0, 12, (2,)))
    return model, F.cross_entropy, a, b, None, None


def padded_lm_ignored_targets():
    """Padding token 0 at the end of each sequence; its targets are -100 (ignored by the loss)."""
    model = PaddedLM()
    batches, masks = [], []
    for n, pads in ((3, (0, 2, 1)), (2, (3, 0))):
        tokens = _tokens(n, low=1)
        targets = tokens.roll(-1, 1).clone()
        for i, pad in enumerate(pads):
            if pad:
                tokens[i, -pad:] = 0
                targets[i, -pad:] = -100
        batches.append((tokens, targets))
        masks.append(targets != -100)
    return model, token_loss, batches[0], batches[1], masks[0], masks[1]


class ClassesInDim1(nn.Module):
    """Logits in PyTorch's cross-entropy layout for sequences, (batch, classes, tokens)."""

    def __init__(self):
        super().__init__()
        self.lm = PaddedLM()

    def forward(self, tokens):
        return self.lm(tokens).transpose(1, 2)


def classes_in_dim_1():
    """Every target counted: the outputs need no mask, whatever their layout."""
    a, b = _tokens(3, low=1), _tokens(2, low=1)
    return ClassesInDim1(), F.cross_entropy, (a, a.roll(-1, 1)), (b, b.roll(-1, 1)), None, None


def classes_last_loss_transposes():
    """Ignored targets with the layout the refusal below asks for: the loss moves the class dim."""
    model, _, batch_a, batch_b, mask_a, mask_b = padded_lm_ignored_targets()
    return model, transposing_cross_entropy, batch_a, batch_b, mask_a, mask_b


def transposing_cross_entropy(logits, targets):
    return F.cross_entropy(logits.transpose(1, 2), targets)


def padding_idx_counted():
    """Padding tokens in the inputs, every target counted: only the embedding row's gradient matters."""
    model = PaddedLM()
    a, b = _tokens(3), _tokens(2)
    a[:, 0] = 0
    b[0, :2] = 0
    return model, token_loss, (a, a.roll(-1, 1).clamp(min=1)), (b, b.roll(-1, 1).clamp(min=1)), None, None


def sparse_embedding():
    """``nn.Embedding(sparse=True)``: autograd's gradients of the table are sparse tensors."""
    model = PaddedLM()
    model.embed = nn.Embedding(VOCAB, 5, sparse=True)
    return _lm_case(model)


def hooked_output():
    return _classification(HookedMLP())


def lstm_lm():
    return _lm_case(RecurrentLM(nn.LSTM))


def gru_lm():
    return _lm_case(RecurrentLM(nn.GRU))


def per_sample_branches():
    model, loss_fn, a, b, mask_a, mask_b = _classification(PerSampleBranches())
    a[0][0] = 3.0  # branches both ways within a batch (tanh of a 4-wide linear)
    a[0][1] = -3.0
    return model, loss_fn, a, b, mask_a, mask_b


def activation_checkpointing():
    return _classification(CheckpointedMLP())


def forward_bypass():
    return _classification(ForwardBypass())


def weight_norm():
    return _classification(WeightNormNet())


def old_spectral_norm():
    return _classification(HookReparametrized(nn.utils.spectral_norm))


def old_weight_norm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of parametrizations
        return _classification(HookReparametrized(nn.utils.weight_norm))


def weight_also_used_outside():
    model = WeightAlsoUsedOutside()
    inputs_a, inputs_b = torch.randn(3, 6, 2), torch.randn(2, 6, 2)
    return model, F.mse_loss, (inputs_a, torch.randn(3, 6, 4)), (inputs_b, torch.randn(2, 6, 4)), None, None


def sequence_first_as_long_as_the_batch():
    a, b = torch.randn(4, 4, 3), torch.randn(3, 3, 3)  # T = n in both batches
    return SequenceFirst(), F.mse_loss, (a, torch.randn(4, 4, 2)), (b, torch.randn(3, 3, 2)), None, None


def keyword_inputs():
    model = KeywordInputs()
    def batch(n):
        return {"tokens": _tokens(n), "weights": torch.rand(n, CONTEXT)}, torch.randint(0, 3, (n,))
    return model, F.cross_entropy, batch(4), batch(3), None, None


def multihead_attention():
    model = AttentionNet()
    def batch(n):
        return _tokens(n), torch.randint(0, 3, (n,))
    return model, F.cross_entropy, batch(4), batch(3), None, None


def functional_ops():
    model = FunctionalOps()
    def batch(n):
        tokens = _tokens(n)
        tokens[:, -1] = 0
        return tokens, torch.randint(0, 3, (n,))
    return model, F.cross_entropy, batch(4), batch(3), None, None


def flattened_rows():
    return _lm_case(FlattenedRows())


def interleaved_rows():
    return _lm_case(InterleavedRows())


def shared_block():
    return _classification(SharedBlockNet(), inputs=5)


def unused_parameters():
    return _classification(UnusedParameters())


def dropout_mlp():
    model, loss_fn, a, b, ma, mb = _classification(DropoutMLP())
    return model.train(), loss_fn, a, b, ma, mb


def cross_entropy_module_ignore_zero():
    """nn.CrossEntropyLoss(ignore_index=0) on a classifier: class-0 samples are not samples."""
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    a = (torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 2, 1]))
    b = (torch.randn(4, 4), torch.tensor([1, 0, 2, 2]))
    return model, nn.CrossEntropyLoss(ignore_index=0), a, b, a[1] != 0, b[1] != 0


def partial_cross_entropy_ignore():
    """``functools.partial(F.cross_entropy, ignore_index=2)`` declares its ignored class."""
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    a = (torch.randn(5, 4), torch.tensor([0, 2, 1, 2, 0]))
    b = (torch.randn(4, 4), torch.tensor([2, 0, 1, 1]))
    return model, functools.partial(F.cross_entropy, ignore_index=2), a, b, a[1] != 2, b[1] != 2


CASES = {
    "nanogpt_tied": nanogpt_tied,
    "module_tied": module_tied,
    "tied_autoencoder": tied_autoencoder,
    "root_scale_wide_readout": root_scale_wide_readout,
    "vit_more_classes_than_width": vit_more_classes_than_width,
    "padded_lm_ignored_targets": padded_lm_ignored_targets,
    "padding_idx_counted": padding_idx_counted,
    "classes_in_dim_1": classes_in_dim_1,
    "classes_last_loss_transposes": classes_last_loss_transposes,
    "sparse_embedding": sparse_embedding,
    "hooked_output": hooked_output,
    "activation_checkpointing": activation_checkpointing,
    "lstm_lm": lstm_lm,
    "gru_lm": gru_lm,
    "per_sample_branches": per_sample_branches,
    "forward_bypass": forward_bypass,
    "weight_norm": weight_norm,
    "old_spectral_norm": old_spectral_norm,
    "old_weight_norm": old_weight_norm,
    "weight_also_used_outside": weight_also_used_outside,
    "sequence_first_as_long_as_the_batch": sequence_first_as_long_as_the_batch,
    "keyword_inputs": keyword_inputs,
    "multihead_attention": multihead_attention,
    "functional_ops": functional_ops,
    "flattened_rows": flattened_rows,
    "interleaved_rows": interleaved_rows,
    "shared_block": shared_block,
    "unused_parameters": unused_parameters,
    "dropout_mlp": dropout_mlp,
    "cross_entropy_module_ignore_zero": cross_entropy_module_ignore_zero,
    "partial_cross_entropy_ignore": partial_cross_entropy_ignore,
}


def _more_cases():
    import user_models_more

    return user_models_more.CASES


CASES.update(_more_cases())


def build(name, seed=0):
    torch.manual_seed(seed)
    return CASES[name]()
