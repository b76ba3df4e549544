"""Tiny instances of every kind of model the measurement core must handle."""

from __future__ import annotations

import math

import mup
import timm
import torch
import torch.nn.functional as F
from torch import nn

from specreach.models.llama import Llama, LlamaConfig


def mlp_classifier(inputs=6, hidden=8, classes=3):
    return nn.Sequential(nn.Linear(inputs, hidden), nn.LayerNorm(hidden), nn.Tanh(), nn.Linear(hidden, classes))


def tiny_llama(vocab=11, context=5):
    return Llama(LlamaConfig(vocab=vocab, layers=2, hidden=8, ff=12, heads=2, context=context))


def tiny_vit(classes=3):
    return timm.models.vision_transformer.VisionTransformer(
        img_size=8, patch_size=4, in_chans=1, num_classes=classes, embed_dim=8, depth=1, num_heads=2,
        mlp_ratio=2.0,
    )


class RandomFeatures(nn.Module):
    """f(x) = (1/sqrt(M)) Σ_j a_j φ(w_jᵀx), φ(u) = sqrt(2) max(0, u), W frozen."""

    def __init__(self, inputs=5, features=16):
        super().__init__()
        self.features = nn.Linear(inputs, features, bias=False)
        nn.init.normal_(self.features.weight)
        self.features.weight.requires_grad_(False)
        self.readout = nn.Linear(features, 1, bias=False)
        self.scale = 1 / math.sqrt(features)

    def forward(self, x):
        return self.readout(math.sqrt(2) * F.relu(self.features(x))) * self.scale


class MupMLP(nn.Module):
    def __init__(self, width, inputs=6, classes=3):
        super().__init__()
        self.input = nn.Linear(inputs, width)
        self.hidden = nn.Linear(width, width)
        self.readout = mup.MuReadout(width, classes)

    def forward(self, x):
        return self.readout(torch.tanh(self.hidden(torch.tanh(self.input(x)))))


def mup_mlp(width=12):
    model = MupMLP(width)
    mup.set_base_shapes(model, MupMLP(4), delta=MupMLP(6))
    for name, p in model.named_parameters():
        if "weight" in name and p.dim() == 2:
            mup.init.normal_(p, std=0.5)
    return model
