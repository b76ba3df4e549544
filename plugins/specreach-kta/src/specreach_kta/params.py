"""The plugin's parameter models, in a module that imports no torch: specreach validates a spec's
``data.params`` (and prints them in ``specreach plugins``) without loading the data source."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class XorQuadrantsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(8, ge=2, description="Image side S in pixels (even: the quadrants split it in halves).")
    noise: float = Field(0.5, gt=0, description="Standard deviation of the Gaussian pixel noise.")
    train_size: int = Field(2048, ge=1, description="Images in the finite training set (one epoch).")
    validation_size: int = Field(512, ge=1, description="Images in the validation pool.")
    sample_seed: int = Field(0, ge=0, description="Seed of the images (training set and validation pool).")

    @model_validator(mode="after")
    def _even_side(self):
        if self.image_size % 2:
            raise ValueError(f"image_size ({self.image_size}) must be even")
        return self
