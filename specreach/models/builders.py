"""The built-in model builders: Llama-2, ViT (timm) and the random-feature model."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from specreach.models.base import ModelBuilder, mup_readout_from, scaled_dimension
from specreach.models.llama import Llama, LlamaConfig
from specreach.models.random_features import RandomFeatureModel
from specreach.models.vit import build_vit


class LlamaParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    vocab: int = Field(ge=2, description="Vocabulary size (tokens).")
    layers: int = Field(ge=1, description="Transformer blocks.")
    hidden: int = Field(ge=1, description="Residual-stream width; the muP width.")
    ff: int = Field(ge=1, description="SwiGLU feed-forward dimension.")
    heads: int = Field(ge=1, description="Attention heads; head_dim = hidden // heads.")
    context: int = Field(ge=1, description="Longest sequence the rotary tables cover.")

    @model_validator(mode="after")
    def _heads_fit(self):
        if self.hidden < self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be at least heads ({self.heads})")
        return self


class LlamaBuilder(ModelBuilder):
    name = "llama"
    Params = LlamaParams
    width_field = "hidden"

    def build(self, params: LlamaParams, *, mup_base: LlamaParams | None = None) -> nn.Module:
        config = LlamaConfig(vocab=params.vocab, layers=params.layers, hidden=params.hidden, ff=params.ff,
                             heads=params.heads, context=params.context)
        model = Llama(config)
        if mup_base is None:
            return model
        model.output = mup_readout_from(model.output)
        base_head_dim = mup_base.hidden // mup_base.heads
        for block in model.layers:
            block.attention.scale = math.sqrt(base_head_dim) / config.head_dim
        return model

    def at_width(self, params: LlamaParams, width: int) -> LlamaParams:
        # Heads stay fixed, so head_dim scales with the width.
        return params.model_copy(update={
            "hidden": width, "ff": scaled_dimension(params.ff, width, params.hidden, "ff"),
        })

    def representation_size(self, params: LlamaParams) -> int:
        return params.hidden


class ViTParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    image_size: int = Field(32, ge=1, description="Image side in pixels.")
    channels: int = Field(3, ge=1, description="Input channels.")
    patch: int = Field(4, ge=1, description="Patch side in pixels.")
    hidden: int = Field(ge=1, description="Embedding width; the muP width.")
    mlp: int = Field(ge=1, description="MLP dimension of each block.")
    heads: int = Field(ge=1, description="Attention heads (hidden must be divisible by heads).")
    layers: int = Field(ge=1, description="Transformer blocks.")
    classes: int = Field(10, ge=1, description="Output classes.")

    @model_validator(mode="after")
    def _shapes_fit(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.image_size % self.patch:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch ({self.patch})")
        return self


class ViTBuilder(ModelBuilder):
    name = "vit"
    Params = ViTParams
    width_field = "hidden"

    def build(self, params: ViTParams, *, mup_base: ViTParams | None = None) -> nn.Module:
        return build_vit(params.image_size, params.channels, params.patch, params.hidden, params.mlp,
                         params.heads, params.layers, params.classes,
                         mup_base_head_dim=None if mup_base is None else mup_base.hidden // mup_base.heads)

    def at_width(self, params: ViTParams, width: int) -> ViTParams:
        # Keep head_dim fixed where the heads scale evenly (Table 4 scales heads with width).
        heads = params.heads * width / params.hidden
        heads = int(heads) if heads == int(heads) and heads >= 1 and width % int(heads) == 0 else params.heads
        return params.model_copy(update={
            "hidden": width, "mlp": scaled_dimension(params.mlp, width, params.hidden, "mlp"), "heads": heads,
        })

    def representation_size(self, params: ViTParams) -> int:
        return params.hidden


class RandomFeaturesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    inputs: int = Field(ge=1, description="Input dimension D.")
    features: int = Field(ge=1, description="Frozen random features M.")
    feature_seed: int = Field(0, description="Seed of the frozen first layer W (shared with the teacher).")


class RandomFeaturesBuilder(ModelBuilder):
    name = "random-features"
    Params = RandomFeaturesParams

    def build(self, params: RandomFeaturesParams, *, mup_base: RandomFeaturesParams | None = None) -> nn.Module:
        if mup_base is not None:
            self.at_width(params, 0)
        return RandomFeatureModel(params.inputs, params.features, params.feature_seed)

    def at_width(self, params: RandomFeaturesParams, width: int) -> RandomFeaturesParams:
        raise ValueError("the random-feature model has a frozen first layer and a 1/sqrt(M) readout; "
                         "use parameterization 'standard'")

    def representation_size(self, params: RandomFeaturesParams) -> int:
        return params.features


BUILDERS = (LlamaBuilder, ViTBuilder, RandomFeaturesBuilder)
