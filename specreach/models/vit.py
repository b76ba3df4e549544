"""Vision Transformer: timm's ``VisionTransformer``, with the muP changes when asked.

muP scales attention logits by sqrt(base head_dim)/head_dim: 1/sqrt(head_dim) at the base width, as
standard, and ∝ 1/head_dim beyond. timm's fused attention path ignores ``attn.scale``, so muP
attention turns fusion off and sets the scale, which timm's explicit path applies
(``q * scale``). The output head becomes a ``MuReadout`` holding the standard head's weights.
"""

from __future__ import annotations

import math
from typing import cast

import timm.models.vision_transformer as timm_vit
from timm.models.vision_transformer import Attention, Block
from torch import Tensor, nn

from specreach.models.base import mup_readout_from


class ViT(timm_vit.VisionTransformer):
    """timm's ViT, with ``representation()`` giving the pooled pre-logits representation."""

    def representation(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images), pre_logits=True)


def build_vit(image_size: int, channels: int, patch: int, hidden: int, mlp: int, heads: int, layers: int,
              classes: int, mup_base_head_dim: int | None = None) -> ViT:
    """The ViT with timm's initialization; with ``mup_base_head_dim``, its muP variant."""
    model = ViT(
        img_size=image_size, patch_size=patch, in_chans=channels, num_classes=classes, embed_dim=hidden,
        depth=layers, num_heads=heads, mlp_ratio=mlp / hidden, class_token=True, global_pool="token",
    )
    if mup_base_head_dim is not None:
        for block in model.blocks:
            attention = cast(Attention, cast(Block, block).attn)
            attention.fused_attn = False  # type: ignore[misc]  # timm declares it Final; off, attn.scale applies
            attention.scale = math.sqrt(mup_base_head_dim) / attention.head_dim
        model.head = mup_readout_from(cast(nn.Linear, model.head))  # a Linear: num_classes > 0
    return model
