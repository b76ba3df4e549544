"""A spec expands to runs: one per combination of its swept values (sizes × seeds), plus the
linear-probe runs that follow each trained one.

A :class:`RunSpec` is everything one run needs, self-contained and picklable, so an executor can
hand it to another process or machine; ``needs`` names the runs whose outputs it reads (a probe
of a trained backbone needs that training run), so any executor can order them. A
:class:`RunResult` is what comes back. This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from specreach.params.models import ModelRecipe, Parameterization
from specreach.sweep_values import typed_values
from specreach.spec import (
    DataSection, MeasureSection, SinkChoice, Spec, TrainSection, sweep_combinations, sweep_value_label, with_values,
)

Phase = Literal["train", "probe-trained", "probe-random"]
Status = Literal["FINISHED", "FAILED", "KILLED"]


class TrackingTarget(BaseModel):
    model_config = ConfigDict(frozen=True)
    enabled: bool
    uri: str
    experiment: str
    artifact_root: Path
    parent_run_id: str | None = None
    sinks: tuple[SinkChoice, ...] = ()  # the registered sinks the run opens besides MLflow

    @classmethod
    def off(cls) -> "TrackingTarget":
        """No tracking (runs listed, not run)."""
        return cls(enabled=False, uri="", experiment="", artifact_root=Path("."))


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
    sweep: dict[str, Any] = {}  # this run's values of the spec's swept keys
    needs: tuple[str, ...] = ()  # runs of the same spec that must finish before this one starts


@dataclass
class RunResult:
    """One run's outcome: its status, MLflow run id, output folder and final numbers.

    ``crashed`` marks a run whose process died (not the run's own failure): resuming runs it
    again from its last checkpoint. ``skipped`` marks a run that had finished before this
    execution (under the same fingerprint): it was not run again.
    """

    name: str
    status: Status
    run_id: str | None
    output_dir: Path
    message: str = ""
    final: dict[str, float] = field(default_factory=dict)
    crashed: bool = False
    skipped: bool = False

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.csv"

    @property
    def metrics(self):
        """The run's metrics table as a pandas DataFrame (empty when nothing was recorded)."""
        import pandas as pd

        from specreach.engine.metrics_table import read_table

        return pd.DataFrame(read_table(self.metrics_path)) if self.metrics_path.exists() else pd.DataFrame()


def sweep_label(assignments: dict) -> str:
    """``{"data.params.alpha": 1.5}`` → ``"alpha=1.5"`` (part of run names)."""
    return "-".join(f"{key.split('.')[-1]}={sweep_value_label(value)}" for key, value in assignments.items())


def expand(spec: Spec, root: Path, tracking: TrackingTarget) -> list[RunSpec]:
    runs: list[RunSpec] = []
    for assignments in sweep_combinations(spec.sweep):
        swept = with_values(spec, assignments)
        prefix = f"{sweep_label(assignments)}-" if assignments else ""
        for seed in swept.train.seeds:
            seeded = with_values(swept, {key: seed + offset for key, offset in swept.train.seed_params.items()},
                                 what="train.seed_params")
            for size, kind, params, preset_parameterization, preset_lr in seeded.model.members():
                runs.extend(_runs_of_size(seeded, root, tracking, f"{prefix}{size}-seed{seed}", size, seed, kind,
                                          params, preset_parameterization, preset_lr, typed_values(swept, assignments)))
    return runs


def _runs_of_size(spec: Spec, root: Path, tracking: TrackingTarget, name: str, size: str, seed: int, kind: str,
                  params: dict, preset_parameterization: dict | None, preset_lr: float | None,
                  sweep: dict) -> list[RunSpec]:
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
    base = RunSpec(
        spec_name=spec.name, name=name, size=size, seed=seed, sweep=sweep,
        recipe=ModelRecipe(kind=kind, params=params, parameterization=parameterization, seed=seed),
        data=spec.data, train=train, measure=spec.measure, output_dir=root / "runs" / name, tracking=tracking,
    )
    runs = [base]
    if spec.probe is not None:
        probe_train = train if spec.probe.steps is None else train.model_copy(update={"steps": spec.probe.steps,
                                                                                      "flops": None})
        for backbone in spec.probe.backbones:
            probe_name = f"{name}-probe-{backbone}"
            reads_trained_run = backbone == "trained" and spec.probe.checkpoint is None
            runs.append(base.model_copy(update={
                "name": probe_name, "phase": f"probe-{backbone}", "train": probe_train,
                "output_dir": root / "runs" / probe_name,
                "backbone_checkpoint": (spec.probe.checkpoint or base.output_dir / "final.pt")
                if backbone == "trained" else None,
                "needs": (name,) if reads_trained_run else (),
            }))
    return runs


# --- fingerprints ---------------------------------------------------------------------------------

#: RunSpec fields that say how a run executes or where it writes, not what it computes.
NOT_COMPUTED = {"output_dir", "tracking", "needs"}
TRAIN_NOT_COMPUTED = {"threads", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints"}
MEASURE_NOT_COMPUTED = {"verify"}


def computed(run: RunSpec) -> dict[str, Any]:
    """What a run computes: its run spec without where it writes and how it is executed."""
    what = run.model_dump(mode="json", exclude=NOT_COMPUTED)
    for key in TRAIN_NOT_COMPUTED:
        what["train"].pop(key, None)
    for key in MEASURE_NOT_COMPUTED:
        what["measure"].pop(key, None)
    if run.train.distributed.processes == 1:  # one process, as before the option existed: the same fingerprint
        what["train"].pop("distributed", None)
    if run.backbone_checkpoint is not None:  # the trained run's final.pt: named relative to the runs folder
        try:
            what["backbone_checkpoint"] = str(Path(run.backbone_checkpoint).relative_to(run.output_dir.parent))
        except ValueError:
            pass
    return what


def fingerprint(run: RunSpec) -> str:
    """A digest of what the run computes and of the specreach release computing it: a run folder
    recorded under another fingerprint holds results of another experiment."""
    import hashlib
    import json

    from specreach import __version__

    text = json.dumps({"run": computed(run), "specreach": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def code_version() -> str:
    """The specreach release, and the git commit of its source when it runs from a checkout."""
    from specreach import __version__

    git = Path(__file__).resolve().parents[2] / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = head[5:]
            ref_file = git / ref
            commit = ref_file.read_text().strip() if ref_file.exists() else next(
                (line.split()[0] for line in (git / "packed-refs").read_text().splitlines() if line.endswith(ref)), "")
        else:
            commit = head
    except (OSError, StopIteration):
        commit = ""
    return f"{__version__} (git {commit[:10]})" if commit else __version__


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["train.lr: 0.003 → 0.001", ...]``: where two run specs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += differences(old.get(key, "(unset)"), new.get(key, "(unset)"), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')}: {old} → {new}"]
