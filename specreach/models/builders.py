"""The built-in model builders: Llama-2, ViT (timm) and the random-feature model."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from specreach.datainfo import DataInfo
from specreach.models.base import ModelBuilder, mup_readout_from, scaled_dimension
from specreach.models.llama import Block, Llama, LlamaConfig
from specreach.models.random_features import RandomFeatureModel
from specreach.models.vit import build_vit
from specreach.params.models import LlamaParams, RandomFeaturesParams, ViTParams


class LlamaBuilder(ModelBuilder[LlamaParams]):
    name = "llama"
    Params = LlamaParams
    width_field = "hidden"

    def build(self, params: LlamaParams, *, mup_base: LlamaParams | None = None) -> nn.Module:
        if params.vocab is None:
            raise ValueError("model 'llama' needs vocab: give it in model.params, or build the model for a data "
                             "source (fit_to_data), which knows its vocabulary")
        config = LlamaConfig(vocab=params.vocab, layers=params.layers, hidden=params.hidden, ff=params.ff,
                             heads=params.heads, context=params.context)
        model = Llama(config)
        if mup_base is None:
            return model
        model.output = mup_readout_from(cast(nn.Linear, model.output))
        base_head_dim = mup_base.hidden // mup_base.heads
        for block in model.layers:
            cast(Block, block).attention.scale = math.sqrt(base_head_dim) / config.head_dim
        return model

    def at_width(self, params: LlamaParams, width: int) -> LlamaParams:
        # Heads stay fixed, so head_dim scales with the width.
        return params.model_copy(update={
            "hidden": width, "ff": scaled_dimension(params.ff, width, params.hidden, "ff"),
        })

    def representation_size(self, params: LlamaParams) -> int:
        return params.hidden

    def output_size(self, params: LlamaParams) -> int:
        if params.vocab is None:
            raise ValueError("model 'llama' has no vocab yet: it comes from model.params or the data source")
        return params.vocab

    def fit_to_data(self, params: LlamaParams, info: DataInfo) -> LlamaParams:
        if params.vocab is not None or info.vocab is None:
            return params
        return params.model_copy(update={"vocab": info.vocab})

    def example_batch(self, params: LlamaParams, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        tokens = torch.randint(0, self.output_size(params), (batch_size, min(params.context, 32) + 1),
                               generator=generator)
        return tokens[:, :-1], tokens[:, 1:]


class ViTBuilder(ModelBuilder[ViTParams]):
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

    def output_size(self, params: ViTParams) -> int:
        return params.classes

    def example_batch(self, params: ViTParams, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        images = torch.randn(batch_size, params.channels, params.image_size, params.image_size, generator=generator)
        return images, torch.randint(0, params.classes, (batch_size,), generator=generator)


class RandomFeaturesBuilder(ModelBuilder[RandomFeaturesParams]):
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

    def output_size(self, params: RandomFeaturesParams) -> int:
        return 1

    def example_batch(self, params: RandomFeaturesParams, batch_size: int,
                      generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return (torch.randn(batch_size, params.inputs, generator=generator),
                torch.randn(batch_size, 1, generator=generator))


BUILDERS = (LlamaBuilder, ViTBuilder, RandomFeaturesBuilder)
