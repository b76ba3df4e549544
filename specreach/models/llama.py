"""A Llama-2 decoder in one file (after karpathy/llama2.c): RMSNorm, rotary position
embeddings, SwiGLU feed-forward, multi-head causal attention, no biases, untied head.

head_dim = hidden // heads and the attention width is heads · head_dim, as in common
Llama implementations. The forward returns next-token logits of shape (batch, tokens, vocab).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class LlamaConfig:
    vocab: int
    layers: int
    hidden: int
    ff: int
    heads: int
    context: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def rotary_frequencies(head_dim: int, context: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of the rotation angles, shape (context, head_dim // 2)."""
    inverse = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(context, dtype=torch.float64), inverse)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs of x (batch, heads, tokens, head_dim) by the position's angles."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    real, imag = pairs.unbind(-1)
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.heads, self.head_dim = config.heads, config.head_dim
        width = config.heads * config.head_dim
        self.wq = nn.Linear(config.hidden, width, bias=False)
        self.wk = nn.Linear(config.hidden, width, bias=False)
        self.wv = nn.Linear(config.hidden, width, bias=False)
        self.wo = nn.Linear(width, config.hidden, bias=False)
        #: Attention logit scale; standard 1/sqrt(head_dim), muP sqrt(base head_dim)/head_dim.
        self.scale = self.head_dim ** -0.5

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        batch, tokens, _ = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

        q = apply_rotary(split(self.wq(x)), cos, sin)
        k = apply_rotary(split(self.wk(x)), cos, sin)
        v = split(self.wv(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.wo(y.transpose(1, 2).reshape(batch, tokens, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(config.hidden, config.ff, bias=False)
        self.w3 = nn.Linear(config.hidden, config.ff, bias=False)
        self.w2 = nn.Linear(config.ff, config.hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.hidden, eps=config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = nn.RMSNorm(config.hidden, eps=config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    rope_cos: Tensor  # rotary tables (buffers, not saved)
    rope_sin: Tensor

    def __init__(self, config: LlamaConfig, output: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab, config.hidden)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.RMSNorm(config.hidden, eps=config.norm_eps)
        self.output = output if output is not None else nn.Linear(config.hidden, config.vocab, bias=False)
        cos, sin = rotary_frequencies(config.head_dim, config.context, config.rope_theta)
        self.register_buffer("rope_cos", cos.float(), persistent=False)
        self.register_buffer("rope_sin", sin.float(), persistent=False)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def representation(self, tokens: Tensor) -> Tensor:
        """The final-layer representation (after the last norm), shape (batch, tokens, hidden)."""
        length = tokens.shape[1]
        if length > self.config.context:
            raise ValueError(f"sequence of {length} tokens is longer than the context length {self.config.context}")
        x = self.embedding(tokens)
        cos = self.rope_cos[:length].to(x.dtype)
        sin = self.rope_sin[:length].to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.output(self.representation(tokens))
