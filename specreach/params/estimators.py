"""Parameter models of the built-in estimators: importable without torch, so that a spec's
``measure.options`` are validated (and ``specreach schema`` lists them) without loading the
measurement core."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExactParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_outputs: int = Field(
        1024, ge=1, description="Refuse models with more output coordinates per sample than this (one backward each)."
    )


class HutchinsonParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    probes: int = Field(8, ge=1, le=4096, description=(
        "K, the Rademacher probes per sample and batch (`measure.probes` and measure_lnp(probes=K) set it). "
        "Each costs about a third of a training step on the benchmark model."))
    readout: Literal["exact", "probed"] = Field(
        "exact",
        description="'exact': a linear readout's share of χ_net in closed form, probes in its input space; "
                    "'probed': plain Hutchinson, probes through the readout too (more variance, as in the paper).",
    )
    positions: Literal["reflected", "independent"] = Field(
        "reflected",
        description="Probes of sequence outputs (batch, positions, features): 'reflected' reflects each sample's "
                    "Rademacher draw over positions so that the kernel's constant-over-positions part adds no "
                    "variance (same expectation; about 2× less variance on the Llamas measured); 'independent': "
                    "plain Rademacher signs at every position.",
    )
    target_rse: float | None = Field(
        None, gt=0, lt=1,
        description="Adaptive K: after the first `probes` probes, keep drawing until χ_net's relative standard "
                    "error on each batch is at most this (e.g. 0.01), or max_probes is reached; the probes used "
                    "are reported as probes_a / probes_b.",
    )
    max_probes: int = Field(64, ge=2, description="The most probes per batch an adaptive measurement draws.")


class EntkParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_memory_gb: float = Field(4.0, gt=0, description="Refuse problems whose Jacobians and kernel need more memory.")
    chunk_size: int | None = Field(None, ge=1, description="Output rows per vmapped backward (None: all at once).")
    positions: list[int] | None = Field(
        None, description="Keep only these positions (dim 1 of the outputs, e.g. tokens) of every sample.")
    output_indices: list[int] | None = Field(
        None, description="Keep only these indices of the outputs' last dim (e.g. vocabulary entries or classes).")
