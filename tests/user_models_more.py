"""More models people bring, beyond what the fast path was designed around: the layers and uses of the
second trust round (padding modes, norms without bias, bags, complex weights) and fifteen models
researchers build by hand. Same contract as ``user_models``: each case returns
``(model, loss_fn, batch_a, batch_b, mask_a, mask_b)``; ``user_models.CASES`` includes them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _classification(model, inputs=(4,), classes=3, n_a=5, n_b=4):
    a = (torch.randn(n_a, *inputs), torch.randint(0, classes, (n_a,)))
    b = (torch.randn(n_b, *inputs), torch.randint(0, classes, (n_b,)))
    return model, F.cross_entropy, a, b, None, None


def _regression(model, inputs=(4,), outputs=(2,), n_a=5, n_b=4):
    a = (torch.randn(n_a, *inputs), torch.randn(n_a, *outputs))
    b = (torch.randn(n_b, *inputs), torch.randn(n_b, *outputs))
    return model, F.mse_loss, a, b, None, None


# --- The second trust round's layers ------------------------------------------------------------

class PaddedConvs(nn.Module):
    """A periodic-grid model: circular, reflect and replicate padding (the conv rule pads with zeros)."""

    def __init__(self):
        super().__init__()
        self.circular = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
        self.reflect = nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect")
        self.replicate = nn.Conv1d(3, 2, 3, padding=1, padding_mode="replicate")
        self.head = nn.Linear(2 * 25, 3)

    def forward(self, x):
        h = torch.tanh(self.reflect(torch.tanh(self.circular(x))))
        return self.head(torch.tanh(self.replicate(h.flatten(2))).flatten(1))


class NormsWithoutBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 6)
        self.norm = nn.LayerNorm(6, bias=False)
        self.affine_free = nn.LayerNorm(6, elementwise_affine=False)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.affine_free(torch.tanh(self.norm(self.first(x)))))


class BagOfWords(nn.Module):
    """``nn.EmbeddingBag`` on a 2-D input, tokens repeated within a bag and a padding_idx."""

    def __init__(self, mode):
        super().__init__()
        self.bag = nn.EmbeddingBag(11, 5, mode=mode, padding_idx=1)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens):
        return self.head(self.bag(tokens))


class BagsWithOffsets(nn.Module):
    """``nn.EmbeddingBag`` called with every bag's tokens in one list and offsets."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(11, 5, mode="sum", padding_idx=1)
        self.head = nn.Linear(5, 3)

    def forward(self, tokens):
        n, length = tokens.shape
        return self.head(self.bag(tokens.reshape(-1), torch.arange(0, n * length, length)))


def _bags(model):
    def tokens(n):
        values = torch.randint(0, 4, (n, 6))  # few distinct tokens: repeats in every bag
        values[0, :2] = 1  # padding
        return values

    return model, F.cross_entropy, (tokens(5), torch.randint(0, 3, (5,))), (tokens(4), torch.randint(0, 3, (4,))), None, None


class SpectralConv(nn.Module):
    """A Fourier neural operator layer: complex weights on the lowest modes of an FFT."""

    def __init__(self, channels=2, modes=3, grid=8):
        super().__init__()
        self.lift = nn.Linear(1, channels)
        self.spectral = nn.Parameter(torch.randn(channels, channels, modes, dtype=torch.complex128) * 0.5)
        self.pointwise = nn.Conv1d(channels, channels, 1)
        self.project = nn.Linear(channels * grid, 2)
        self.modes = modes

    def forward(self, x):
        h = self.lift(x.unsqueeze(-1)).transpose(1, 2)  # (n, channels, grid)
        spectrum = torch.fft.rfft(h)
        mixed = torch.zeros_like(spectrum)
        mixed[:, :, :self.modes] = torch.einsum("bim,iom->bom", spectrum[:, :, :self.modes], self.spectral)
        h = F.gelu(torch.fft.irfft(mixed, n=h.shape[-1]) + self.pointwise(h))
        return self.project(h.flatten(1))


# --- Fifteen models researchers build by hand ----------------------------------------------------

class TinyUNet(nn.Module):
    """Down by a strided conv, up by a transposed conv (no rule: VJP), a skip concatenation."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(3, 2, 2, stride=2)
        self.out = nn.Conv2d(3, 1, 1)

    def forward(self, x):
        skip = x
        h = self.up(torch.relu(self.down(x)))
        return self.out(torch.cat([h, skip], dim=1)).flatten(1)


class SeparableConvs(nn.Module):
    """A MobileNet block: depthwise and pointwise convs, BatchNorm on running statistics, ReLU6."""

    def __init__(self):
        super().__init__()
        self.depthwise = nn.Conv2d(3, 3, 3, padding=1, groups=3, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.pointwise = nn.Conv2d(3, 4, 1)
        self.head = nn.Linear(4, 3)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = F.relu6(self.pointwise(F.relu6(self.bn(self.depthwise(x)))))
        return self.head(h.mean(dim=(2, 3)))


class TopOneMixture(nn.Module):
    """A mixture of experts with a top-1 softmax router per token, dispatched by index."""

    def __init__(self, width=4, experts=3):
        super().__init__()
        self.router = nn.Linear(width, experts)
        self.experts = nn.ModuleList(nn.Linear(width, width) for _ in range(experts))
        self.head = nn.Linear(width, 3)

    def forward(self, x):  # (n, tokens, width)
        gates = self.router(x).softmax(-1)
        weight, choice = gates.max(dim=-1)
        out = torch.zeros_like(x)
        for index, expert in enumerate(self.experts):
            chosen = choice == index
            out[chosen] = expert(x[chosen]) * weight[chosen].unsqueeze(-1)
        return self.head(torch.tanh(out).mean(dim=1))


class Siamese(nn.Module):
    """One encoder applied to two inputs; the head compares them."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.head = nn.Linear(10, 2)

    def forward(self, left, right):
        a, b = self.encoder(left), self.encoder(right)
        return self.head(torch.cat([a * b, (a - b).abs()], dim=1))


def siamese():
    def batch(n):
        return (torch.randn(n, 4), torch.randn(n, 4)), torch.randint(0, 2, (n,))

    return Siamese(), F.cross_entropy, batch(5), batch(4), None, None


class FiLM(nn.Module):
    """Feature-wise linear modulation: a conditioning input makes each sample's scale and shift."""

    def __init__(self):
        super().__init__()
        self.features = nn.Linear(4, 6)
        self.film = nn.Linear(2, 12)
        self.head = nn.Linear(6, 3)

    def forward(self, x, condition):
        scale, shift = self.film(condition).chunk(2, dim=-1)
        return self.head(torch.relu(self.features(x) * (1 + scale) + shift))


def film():
    def batch(n):
        return {"x": torch.randn(n, 4), "condition": torch.randn(n, 2)}, torch.randint(0, 3, (n,))

    return FiLM(), F.cross_entropy, batch(5), batch(4), None, None


class SwiGLU(nn.Module):
    """A gated feed-forward (``F.silu(x W) * (x V)``) and ``F.glu`` on a sequence."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(4, 6, bias=False)
        self.value = nn.Linear(4, 6, bias=False)
        self.glu_in = nn.Linear(6, 8)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = F.silu(self.gate(x)) * self.value(x)
        return self.head(F.glu(self.glu_in(h), dim=-1)).mean(dim=1)


class ALiBiAttention(nn.Module):
    """Self-attention with learned ALiBi slopes: a per-head parameter times a distance matrix."""

    def __init__(self, width=4, heads=2, tokens=5):
        super().__init__()
        self.qkv = nn.Linear(width, 3 * width)
        self.slopes = nn.Parameter(torch.tensor([0.5, 0.25]))
        self.out = nn.Linear(width, 3)
        self.heads = heads
        self.register_buffer("distance", -(torch.arange(tokens)[None] - torch.arange(tokens)[:, None]).abs().float())

    def forward(self, x):
        n, t, width = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.slopes.view(1, -1, 1, 1) * self.distance.to(x.dtype)
        attention = ((q @ k.transpose(-1, -2)) / math.sqrt(width // self.heads) + bias).softmax(-1)
        return self.out((attention @ v).transpose(1, 2).reshape(n, t, width).mean(dim=1))


class PerceiverLatents(nn.Module):
    """A learned latent array repeated over the batch, cross-attending to the inputs through SDPA."""

    def __init__(self, width=4, latents=3):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(latents, width))
        self.kv = nn.Linear(width, 2 * width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        queries = self.latents.unsqueeze(0).repeat(x.shape[0], 1, 1)
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.head(F.scaled_dot_product_attention(queries, k, v).mean(dim=1))


class ClippedSiLU(torch.autograd.Function):
    """A custom autograd Function (with setup_context, so torch.func can transform it)."""

    @staticmethod
    def forward(x):
        return x * torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * (s * (1 + x * (1 - s)))

    @staticmethod
    def vmap(info, in_dims, x):
        return ClippedSiLU.apply(x), in_dims[0]


class CustomFunctionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(ClippedSiLU.apply(self.first(x)))


class WeightStandardizedConv(nn.Conv2d):
    """Weight standardization: the weight normalized in the forward, through F.conv2d."""

    def forward(self, x):
        weight = self.weight
        mean = weight.mean(dim=(1, 2, 3), keepdim=True)
        std = weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5
        return F.conv2d(x, (weight - mean) / std, self.bias, self.stride, self.padding)


class StandardizedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = WeightStandardizedConv(2, 3, 3, padding=1)
        self.norm = nn.GroupNorm(1, 3)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def label_smoothing():
    model, _, a, b, _, _ = _classification(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)))
    return model, nn.CrossEntropyLoss(label_smoothing=0.1), a, b, None, None


class CellLoop(nn.Module):
    """A recurrent net written as a Python loop over time around ``nn.GRUCell``."""

    def __init__(self):
        super().__init__()
        self.cell = nn.GRUCell(3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):  # (n, time, 3)
        h = x.new_zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


class GraphConv(nn.Module):
    """A graph convolution per sample: each sample carries its own adjacency matrix (bmm)."""

    def __init__(self):
        super().__init__()
        self.message = nn.Linear(3, 4)
        self.update = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, features, adjacency):
        h = torch.relu(torch.bmm(adjacency, self.message(features)))
        h = torch.relu(torch.bmm(adjacency, self.update(h)))
        return self.head(h.mean(dim=1))


def graph_conv():
    def batch(n):
        adjacency = (torch.rand(n, 5, 5) > 0.5).double()
        adjacency = (adjacency + adjacency.transpose(1, 2) + torch.eye(5)).clamp(max=1)
        return {"features": torch.randn(n, 5, 3), "adjacency": adjacency / adjacency.sum(-1, keepdim=True)}, \
            torch.randint(0, 2, (n,))

    return GraphConv(), F.cross_entropy, batch(5), batch(4), None, None


class EulerODE(nn.Module):
    """A neural ODE with fixed Euler steps: one vector field applied repeatedly."""

    def __init__(self):
        super().__init__()
        self.field = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3))
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        for _ in range(4):
            x = x + 0.25 * self.field(x)
        return self.head(x)


class TorchTransformer(nn.Module):
    """PyTorch's own ``nn.TransformerEncoderLayer`` (pre-norm, GELU) under a token embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.1, activation="gelu",
                                                batch_first=True, norm_first=True)
        self.head = nn.Linear(8, 11)

    def forward(self, tokens):
        return self.head(self.layer(self.embed(tokens)))


def torch_transformer():
    def batch(n):
        tokens = torch.randint(0, 11, (n, 5))
        return tokens, tokens.roll(-1, 1)

    def loss(logits, targets):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    return TorchTransformer(), loss, batch(3), batch(2), None, None


class CausalTCN(nn.Module):
    """A temporal conv net: causal left padding with F.pad, dilations 1 and 2, a residual."""

    def __init__(self):
        super().__init__()
        self.first = nn.Conv1d(2, 3, 2, dilation=1)
        self.second = nn.Conv1d(3, 3, 2, dilation=2)
        self.head = nn.Linear(3, 2)

    def forward(self, x):  # (n, channels, time)
        h = torch.relu(self.first(F.pad(x, (1, 0))))
        h = h + torch.relu(self.second(F.pad(h, (2, 0))))
        return self.head(h[:, :, -1])


class MixtureDensity(nn.Module):
    """A mixture density network: the head emits mixture logits, means and log-scales."""

    def __init__(self, components=2):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 6), nn.Tanh())
        self.head = nn.Linear(6, 3 * components)

    def forward(self, x):
        return self.head(self.body(x))


def mixture_nll(outputs, y):
    logits, mean, log_scale = outputs.chunk(3, dim=-1)
    log_prob = torch.distributions.Normal(mean, log_scale.exp()).log_prob(y)
    return -torch.logsumexp(logits.log_softmax(-1) + log_prob, dim=-1).mean()


def mixture_density():
    def batch(n):
        return torch.randn(n, 3), torch.randn(n, 1)

    return MixtureDensity(), mixture_nll, batch(5), batch(4), None, None


CASES = {
    "padded_convs": lambda: _classification(PaddedConvs(), inputs=(2, 5, 5)),
    "norms_without_bias": lambda: _classification(NormsWithoutBias()),
    "embedding_bag_mean": lambda: _bags(BagOfWords("mean")),
    "embedding_bag_sum": lambda: _bags(BagOfWords("sum")),
    "embedding_bag_offsets": lambda: _bags(BagsWithOffsets()),
    "fourier_neural_operator": lambda: _regression(SpectralConv(), inputs=(8,)),
    "tiny_unet": lambda: _regression(TinyUNet(), inputs=(1, 4, 4), outputs=(16,)),
    "separable_convs": lambda: _classification(SeparableConvs().eval(), inputs=(3, 4, 4)),  # running statistics
    "top_one_mixture": lambda: _classification(TopOneMixture(), inputs=(3, 4)),
    "siamese": siamese,
    "film": film,
    "swiglu": lambda: _classification(SwiGLU(), inputs=(3, 4)),
    "alibi_attention": lambda: _classification(ALiBiAttention(), inputs=(5, 4)),
    "perceiver_latents": lambda: _classification(PerceiverLatents(), inputs=(5, 4)),
    "custom_autograd_function": lambda: _classification(CustomFunctionNet()),
    "weight_standardized_conv": lambda: _classification(StandardizedConvNet(), inputs=(2, 4, 4)),
    "label_smoothing": label_smoothing,
    "gru_cell_loop": lambda: _classification(CellLoop(), inputs=(4, 3)),
    "graph_conv": graph_conv,
    "euler_ode": lambda: _regression(EulerODE(), inputs=(3,)),
    "torch_transformer_layer": torch_transformer,
    "causal_tcn": lambda: _regression(CausalTCN(), inputs=(2, 6)),
    "mixture_density": mixture_density,
}
