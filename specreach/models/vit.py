"""Vision Transformer: timm's ``VisionTransformer``, with the muP changes when asked.

muP needs attention logits scaled by 1/head_dim instead of 1/sqrt(head_dim). timm's fused
attention path ignores ``attn.scale``, so muP attention turns fusion off and sets the scale,
which timm's explicit path applies (``q * scale``). The output head becomes a ``MuReadout``.
"""

from __future__ import annotations

import mup
import timm.models.vision_transformer as timm_vit
from torch import Tensor


class ViT(timm_vit.VisionTransformer):
    """timm's ViT, with ``features()`` giving the pooled pre-logits representation."""

    def features(self, images: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(images), pre_logits=True)


def build_vit(image_size: int, channels: int, patch: int, hidden: int, mlp: int, heads: int, layers: int,
              classes: int, mup_readout: bool = False) -> ViT:
    model = ViT(
        img_size=image_size, patch_size=patch, in_chans=channels, num_classes=classes, embed_dim=hidden,
        depth=layers, num_heads=heads, mlp_ratio=mlp / hidden, class_token=True, global_pool="token",
    )
    if mup_readout:
        for block in model.blocks:
            block.attn.fused_attn = False
            block.attn.scale = 1.0 / block.attn.head_dim
        model.head = mup.MuReadout(hidden, classes)
    return model
