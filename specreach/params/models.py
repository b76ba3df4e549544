"""Parameters of the built-in model builders, the parameterization and the model recipe."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Parameterization(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["standard", "mup"] = Field("standard", description="'standard' or 'mup'.")
    base_width: int | None = Field(None, ge=1, description="muP: the width at which muP equals standard.")

    @model_validator(mode="after")
    def _base_width_for_mup(self):
        if self.kind == "mup" and self.base_width is None:
            raise ValueError("parameterization 'mup' needs base_width")
        if self.kind == "standard" and self.base_width is not None:
            raise ValueError("base_width only applies to parameterization 'mup'")
        return self


class ModelRecipe(BaseModel):
    """Everything needed to rebuild a model: builder kind, its parameters, parameterization, seed."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    params: dict[str, Any]
    parameterization: Parameterization = Parameterization()
    seed: int = 0


class LlamaParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    vocab: int | None = Field(None, ge=2, description=(
        "Vocabulary size (tokens); default: the data source's vocabulary."))
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

    def declared_outputs(self) -> int | None:
        return self.vocab  # None: the data's


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

    def declared_outputs(self) -> int | None:
        return self.classes


class RandomFeaturesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    inputs: int = Field(ge=1, description="Input dimension D.")
    features: int = Field(ge=1, description="Frozen random features M.")
    feature_seed: int = Field(0, description="Seed of the frozen first layer W (shared with the teacher).")

    def declared_outputs(self) -> int | None:
        return 1
