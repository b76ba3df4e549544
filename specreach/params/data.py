"""Parameters of the built-in data sources, and the task each declares (``task_outputs``: see
:mod:`specreach.datainfo`; SimpleStories' vocabulary is its tokenizer's, known only from the files)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from specreach.datainfo import TaskOutputs

BYTE_VOCAB = 256
PIXEL_VOCAB = 256  # CIFAR-5M's grayscale levels
CIFAR_CLASSES = 10
DIGIT_CLASSES = 10
DIGIT_LEVELS = 17  # sklearn's digits: pixel values 0 … 16
DEFAULT_BPE_VOCAB = 1024
DIGITS_SAMPLES = 1797  # images in sklearn's copy of the UCI optical digits


class PowerlawTeacherParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float = Field(1.5, gt=0, description="Spectral decay exponent α: input variances λ_k ∝ k^(−α).")
    inputs: int = Field(256, ge=1, description="Input dimension D.")
    features: int = Field(1024, ge=1, description="Number of random features M (the teacher's and student's width).")
    feature_seed: int = Field(0, ge=0, description="Seed of the frozen feature matrix W; use the student model's seed.")
    teacher_seed: int = Field(1, ge=0, description="Seed of the teacher's readout coefficients a* ~ N(0, 1).")
    sample_seed: int = Field(2, ge=0, description="Seed of the input draws (training set and validation pool).")
    train_size: int = Field(1024, ge=2, description="Samples in the finite training set (one epoch).")
    validation_size: int = Field(1024, ge=1, description="Samples in the validation pool.")

    def task_outputs(self) -> TaskOutputs:
        return TaskOutputs("regression", 1)


class Cifar5mParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path = Field(description="Folder holding cifar5m_part{0..5}.npz.")
    task: Literal["classification", "next-pixel"] = Field(
        "classification", description="classification: RGB images → 10 classes; next-pixel: grayscale pixel tokens."
    )
    train_parts: tuple[int, ...] = Field(
        (0, 1, 2, 3, 4, 5), min_length=1, description="Part numbers read for training, in this order."
    )
    validation_part: int = Field(5, ge=0, description="Part whose last validation_size images are the validation pool.")
    validation_size: int = Field(10_000, ge=1, description="Images in the validation pool.")
    max_train_samples: int | None = Field(
        None, ge=1, description="Cap the training set to its first this many images (in part order); None: all."
    )

    @field_validator("train_parts")
    @classmethod
    def _distinct_parts(cls, parts: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(parts)) != len(parts) or min(parts) < 0:
            raise ValueError(f"train_parts must be distinct non-negative part numbers, got {parts}")
        return parts

    def task_outputs(self) -> TaskOutputs:
        if self.task == "classification":
            return TaskOutputs("classification", CIFAR_CLASSES)
        return TaskOutputs("next-token", PIXEL_VOCAB)


class SimpleStoriesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path = Field(description="Local copy: the dataset's data files and tokenizer.json.")
    files: str = Field(
        "*train*", min_length=1, description="Pattern (fnmatch) on data-file paths relative to directory."
    )
    column: str | None = Field(None, min_length=1, description="Text column; None: 'story', else 'text'.")
    context: int = Field(512, ge=1, description="Tokens per input sequence T; a window holds T + 1.")
    validation_size: int = Field(
        256, ge=1, description="Windows in the validation pool (from the corpus's last stories)."
    )
    max_stories: int | None = Field(None, ge=1, description="Train on the first this many stories only; None: all.")
    download: bool = Field(False, description="Download missing files from the Hugging Face Hub (only when true).")
    dataset_repo: str = Field("SimpleStories/SimpleStories", description="Hub dataset repository, for download.")
    tokenizer_repo: str = Field(
        "SimpleStories/SimpleStories-35M", description="Hub model repository holding tokenizer.json, for download."
    )


class PydocTextParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    context: int = Field(64, ge=1, description="Tokens (bytes) per input sequence T; a window holds T + 1.")
    validation_size: int = Field(
        64, ge=1, description="Windows held out from the end of the text as the validation pool."
    )

    def task_outputs(self) -> TaskOutputs:
        return TaskOutputs("next-token", BYTE_VOCAB)


class TextFileParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="A text file, or a folder whose .txt files are read in name order.")
    tokenizer: Literal["bytes", "bpe"] = Field(
        "bytes", description="bytes: raw bytes as tokens (vocab 256); bpe: byte-level BPE trained on the training text."
    )
    vocab_size: int = Field(
        DEFAULT_BPE_VOCAB, ge=BYTE_VOCAB, le=1 << 16,
        description="Vocabulary of the BPE tokenizer (tokenizer: bpe only).",
    )
    context: int = Field(128, ge=1, description="Tokens per input sequence T; a window holds T + 1.")
    validation_size: int = Field(
        64, ge=1, description="Windows held out from the end of the text as the validation pool."
    )

    @model_validator(mode="after")
    def _vocab_size_needs_bpe(self) -> TextFileParams:
        if self.tokenizer == "bytes" and "vocab_size" in self.model_fields_set:
            raise ValueError("vocab_size applies to tokenizer: bpe only (byte tokens have a vocabulary of 256)")
        return self

    def task_outputs(self) -> TaskOutputs:
        return TaskOutputs("next-token", self.vocab_size if self.tokenizer == "bpe" else BYTE_VOCAB)


class DigitsParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    validation_size: int = Field(
        297, ge=1, lt=DIGITS_SAMPLES, description="Images held out as the validation pool (the last ones)."
    )
    task: Literal["classification", "next-pixel"] = Field(
        "classification", description="Classify the digit, or predict each pixel level (0-16) from the ones before.")

    def task_outputs(self) -> TaskOutputs:
        if self.task == "classification":
            return TaskOutputs("classification", DIGIT_CLASSES)
        return TaskOutputs("next-token", DIGIT_LEVELS)
