"""Recorded runs as the figures see them: loading, grouping, and per-seed window curves.

A run directory holds ``metrics.csv`` (every recorded row) and ``run.json`` (what the run is:
spec, size, seed, parameterization, sweep values, phase, parameter count, steps, run spec).

Runs are grouped by everything that makes them a different experiment — the spec, the
parameterization, the value of every swept key, the size and the phase — so that only the seeds
of one setting are ever pooled. A figure averages the seeds of a group and shows their spread;
nothing averages over a sweep axis.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from specreach.engine.metrics_table import read_table


@dataclass
class RunData:
    directory: Path
    meta: dict
    rows: list[dict]

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def spec_name(self) -> str:
        return str(self.meta.get("specreach.spec", ""))

    @property
    def size(self) -> str:
        return str(self.meta.get("size", self.name))

    @property
    def seed(self) -> int:
        return int(self.meta.get("seed", 0))

    @property
    def phase(self) -> str:
        return self.meta.get("phase", "train")

    @property
    def parameterization(self) -> str:
        return self.meta.get("parameterization", "standard")

    @property
    def parameters(self) -> int | None:
        value = self.meta.get("parameters")
        return int(value) if value is not None else None

    @property
    def trainable_parameters(self) -> int | None:
        value = self.meta.get("trainable_parameters", self.meta.get("parameters"))
        return int(value) if value is not None else None

    @property
    def sweep(self) -> dict[str, Any]:
        return dict(self.meta.get("sweep") or {})

    @property
    def run_spec(self) -> dict:
        return self.meta.get("run_spec", {})

    @property
    def data_kind(self) -> str:
        return self.run_spec.get("data", {}).get("kind") or str(self.meta.get("data", ""))

    @property
    def steps(self) -> int:
        return int(self.meta.get("steps") or 1)

    def values(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every row with a finite ``key``."""
        return [(row["step"], row[key]) for row in self.rows if finite(row.get(key))]

    def last(self, key: str) -> float | None:
        values = self.values(key)
        return values[-1][1] if values else None

    def first_at(self, key: str, step: int) -> float | None:
        return next((value for s, value in self.values(key) if s == step), None)


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_run(directory: Path) -> RunData:
    directory = Path(directory)
    meta_path = directory / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return RunData(directory, meta, read_table(directory / "metrics.csv"))


def run_directories(root: Path) -> list[Path]:
    """Directories written by runs (metrics.csv beside run.json), not MLflow's artifact copies."""
    return sorted(p.parent for p in Path(root).rglob("run.json") if (p.parent / "metrics.csv").exists())


def collect_runs(paths: Iterable[Path]) -> list[RunData]:
    """Runs under each path: a spec's output directory, its ``runs/`` folder, or one run directory."""
    found: dict[Path, RunData] = {}
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no run directory at {path}")
        for directory in [path] if (path / "metrics.csv").exists() else run_directories(path):
            found[directory.resolve()] = load_run(directory)
    if not found:
        raise FileNotFoundError(f"no runs (metrics.csv) under {', '.join(map(str, paths))}")
    return list(found.values())


# --- groups of seeds -------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class GroupKey:
    """One experimental setting; its runs differ in the seed only."""

    spec: str
    parameterization: str
    sweep: tuple[tuple[str, str], ...]
    size: str
    phase: str


def group_key(run: RunData, leave_out: Iterable[str] = ()) -> GroupKey:
    """The run's setting; ``leave_out`` names sweep axes that a figure shows on an axis of its own
    (e.g. the budget of an isocompute figure), never ones it would average over."""
    skip = set(leave_out)
    sweep = tuple(sorted((key, _text(value)) for key, value in run.sweep.items() if key not in skip))
    return GroupKey(run.spec_name, run.parameterization, sweep, run.size, run.phase)


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def groups(runs: Iterable[RunData], phase: str | None = "train", leave_out: Iterable[str] = ()
           ) -> dict[GroupKey, list[RunData]]:
    """Runs by setting (``phase=None``: every phase), in the order spec, parameterization, sweep,
    parameter count; each group's runs sorted by seed."""
    found: dict[GroupKey, list[RunData]] = defaultdict(list)
    for run in runs:
        if phase is None or run.phase == phase:
            found[group_key(run, leave_out)].append(run)
    ordered = sorted(found.items(), key=lambda item: (item[0].spec, item[0].parameterization, item[0].sweep,
                                                     item[1][0].parameters or 0, item[0].size, item[0].phase))
    return {key: sorted(members, key=lambda r: r.seed) for key, members in ordered}


class Labels:
    """Legend text for groups: the size and its parameter count, and only those parts of the
    setting that differ between the groups of a figure (spec, parameterization, sweep values)."""

    def __init__(self, keys: Iterable[GroupKey]):
        keys = list(keys)
        self.show_spec = len({k.spec for k in keys}) > 1
        self.show_parameterization = len({k.parameterization for k in keys}) > 1 or any(
            k.parameterization != "standard" for k in keys)
        self.show_sweep = {axis for k in keys for axis, _ in k.sweep
                           if len({dict(other.sweep).get(axis) for other in keys}) > 1}

    def __call__(self, key: GroupKey, parameters: int | None = None) -> str:
        parts = [key.size]
        if parameters:
            parts[0] += f" ({human_count(parameters)} parameters)"
        if self.show_parameterization:
            parts.append("muP" if key.parameterization == "mup" else key.parameterization)
        parts += [f"{axis.split('.')[-1]}={value}" for axis, value in key.sweep if axis in self.show_sweep]
        if self.show_spec:
            parts.append(key.spec)
        return ", ".join(parts)

    def setting(self, key: GroupKey) -> str:
        """The label without size or parameter count (for series across sizes)."""
        return self(GroupKey(key.spec, key.parameterization, key.sweep, "", key.phase)).lstrip(", ") or "all"


def human_count(count: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g}{unit}"
    return f"{count:.0f}"


def key_text(key: GroupKey) -> str:
    """A stable string for summary.json: every part of the setting."""
    parts = [key.spec, key.parameterization, *(f"{axis}={value}" for axis, value in key.sweep), key.size]
    if key.phase != "train":
        parts.append(key.phase)
    return " | ".join(part for part in parts if part)


# --- per-window values, per seed -------------------------------------------------------------------

def window_means(rows: list[dict], key: str) -> dict[int, tuple[float, float]]:
    """Window index → (mean step, mean value of ``key``) over the window's measured steps."""
    found: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if finite(row.get(key)) and finite(row.get("window")):
            found[int(row["window"])].append((row["step"], row[key]))
    return {window: (float(np.mean([s for s, _ in entries])), float(np.mean([v for _, v in entries])))
            for window, entries in sorted(found.items())}


@dataclass
class SeedCurves:
    """One quantity per window for each seed of a group, on the windows every seed has."""

    steps: np.ndarray  # (windows,) mean measured step of each window
    values: np.ndarray  # (seeds, windows)
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def mean(self) -> np.ndarray:
        return self.values.mean(axis=0)

    @property
    def low(self) -> np.ndarray:
        return self.values.min(axis=0)

    @property
    def high(self) -> np.ndarray:
        return self.values.max(axis=0)

    def summary(self, index: int) -> dict:
        column = self.values[:, index]
        return seed_summary(column.tolist(), self.seeds, step=float(self.steps[index]))


def seed_curves(group: list[RunData], key: str) -> SeedCurves:
    per_run = [window_means(run.rows, key) for run in group]
    per_run_seeds = [(run.seed, windows) for run, windows in zip(group, per_run) if windows]
    if not per_run_seeds:
        return SeedCurves(np.array([]), np.zeros((0, 0)), [])
    common = sorted(set.intersection(*(set(windows) for _, windows in per_run_seeds)))
    steps = np.array([np.mean([windows[w][0] for _, windows in per_run_seeds]) for w in common])
    values = np.array([[windows[w][1] for w in common] for _, windows in per_run_seeds]).reshape(
        len(per_run_seeds), len(common))
    return SeedCurves(steps, values, [seed for seed, _ in per_run_seeds])


def seed_summary(values: list[float | None], seeds: list[int], **extra) -> dict:
    """Mean, standard deviation, range and every seed's value (None where a seed has none)."""
    kept = [(s, v) for s, v in zip(seeds, values) if v is not None and math.isfinite(v)]
    numbers = [v for _, v in kept]
    if not numbers:
        return {"seeds": len(seeds), "mean": None, **extra}
    return {
        **extra,
        "seeds": len(numbers),
        "mean": float(np.mean(numbers)),
        "std": float(np.std(numbers, ddof=1)) if len(numbers) > 1 else None,
        "min": float(min(numbers)),
        "max": float(max(numbers)),
        "per_seed": {str(s): float(v) for s, v in kept},
    }
