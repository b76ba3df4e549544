"""A spec expands to runs: one per combination of its swept values (sizes × seeds), plus the
linear-probe runs that follow each trained one. A :class:`RunSpec` is everything one run needs,
self-contained and picklable, so a launcher can hand it to another process or machine."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from specreach.models.parameterization import ModelRecipe, Parameterization
from specreach.spec import DataSection, MeasureSection, Spec, TrainSection

Phase = Literal["train", "probe-trained", "probe-random"]


class TrackingTarget(BaseModel):
    model_config = ConfigDict(frozen=True)
    enabled: bool
    uri: str
    experiment: str
    artifact_root: Path
    parent_run_id: str | None = None


class RunSpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    spec_name: str
    name: str  # unique within the spec, e.g. "small-seed0" or "small-seed0-probe-random"
    size: str
    seed: int
    phase: Phase = "train"
    recipe: ModelRecipe
    data: DataSection
    train: TrainSection  # with this run's learning rate in train.lr
    measure: MeasureSection
    output_dir: Path
    tracking: TrackingTarget
    backbone_checkpoint: Path | None = None  # probe-trained: the trained run's final checkpoint


def expand(spec: Spec, root: Path, tracking: TrackingTarget) -> list[RunSpec]:
    runs: list[RunSpec] = []
    for size, kind, params, preset_parameterization, preset_lr in spec.model.members():
        parameterization = spec.parameterization
        if preset_parameterization is not None and preset_parameterization.get("kind") == "mup" \
                and spec.parameterization.kind == "standard":
            parameterization = Parameterization(**preset_parameterization)
        if size in spec.train.lr_per_size:
            lr = spec.train.lr_per_size[size]
        elif preset_lr is not None and "lr" not in spec.train.model_fields_set:
            lr = preset_lr  # the paper's rate for this size, unless the spec sets one
        else:
            lr = spec.train.lr
        train = spec.train.model_copy(update={"lr": lr})
        for seed in spec.train.seeds:
            name = f"{size}-seed{seed}"
            base = RunSpec(
                spec_name=spec.name, name=name, size=size, seed=seed,
                recipe=ModelRecipe(kind=kind, params=params, parameterization=parameterization, seed=seed),
                data=spec.data, train=train, measure=spec.measure, output_dir=root / "runs" / name,
                tracking=tracking,
            )
            runs.append(base)
            if spec.probe is not None:
                probe_train = train if spec.probe.steps is None else train.model_copy(update={"steps": spec.probe.steps})
                for backbone in spec.probe.backbones:
                    probe_name = f"{name}-probe-{backbone}"
                    checkpoint = spec.probe.checkpoint or (base.output_dir / "final.pt")
                    runs.append(base.model_copy(update={
                        "name": probe_name, "phase": f"probe-{backbone}", "train": probe_train,
                        "output_dir": root / "runs" / probe_name,
                        "backbone_checkpoint": checkpoint if backbone == "trained" else None,
                    }))
    return runs
