"""Figures, from recorded metrics only (the metrics tables of run directories), so they can be
drawn again later without MLflow.

- ``loss_and_position.png``: training loss and P against step, log–log, one curve per size
  (paper Figure 1); measured steps are averaged per window, and over seeds.
- ``components.png``: the normalized L̃, Ñ, P and Ñ·P per size (Figures 10–11).
- ``final_loss.png``: final validation loss against parameter count, with a power-law fit.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from specreach.engine.metrics_table import read_table  # noqa: E402


@dataclass
class RunData:
    name: str
    meta: dict
    rows: list[dict]

    @property
    def size(self) -> str:
        """The size name; muP runs are marked so that they never pool with standard ones."""
        size = self.meta.get("size", self.name)
        return f"{size} (muP)" if self.meta.get("parameterization") == "mup" else size

    @property
    def parameters(self) -> int | None:
        value = self.meta.get("parameters")
        return int(value) if value is not None else None


def load_run(directory: Path) -> RunData:
    directory = Path(directory)
    meta_path = directory / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return RunData(directory.name, meta, read_table(directory / "metrics.csv"))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def window_means(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean step, mean value) of ``key`` per measurement window."""
    groups: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for row in rows:
        if _finite(row.get(key)) and _finite(row.get("window")):
            groups[int(row["window"])].append((row["step"], row[key]))
    windows = sorted(groups)
    steps = np.array([np.mean([s for s, _ in groups[w]]) for w in windows])
    values = np.array([np.mean([v for _, v in groups[w]]) for w in windows])
    return steps, values


def by_size(runs: Iterable[RunData]) -> dict[str, list[RunData]]:
    grouped: dict[str, list[RunData]] = defaultdict(list)
    for run in runs:
        if run.meta.get("phase", "train") == "train":
            grouped[run.size].append(run)
    return dict(sorted(grouped.items(), key=lambda item: item[1][0].parameters or 0))


def _seed_mean(runs: list[RunData], key: str) -> tuple[np.ndarray, np.ndarray]:
    curves = [window_means(run.rows, key) for run in runs]
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return np.array([]), np.array([])
    length = min(len(c[0]) for c in curves)
    return np.mean([c[0][:length] for c in curves], axis=0), np.mean([c[1][:length] for c in curves], axis=0)


def _label(runs: list[RunData]) -> str:
    parameters = runs[0].parameters
    return f"{runs[0].size} ({parameters / 1e6:.2g}M)" if parameters else runs[0].size


def plot_loss_and_position(runs: list[RunData], path: Path) -> Path:
    fig, (ax_loss, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    for size, group in by_size(runs).items():
        steps = [np.array([r["step"] + 1 for r in run.rows if _finite(r.get("loss"))]) for run in group]
        losses = [np.array([r["loss"] for r in run.rows if _finite(r.get("loss"))]) for run in group]
        length = min(len(s) for s in steps)
        (line,) = ax_loss.plot(steps[0][:length], np.mean([loss[:length] for loss in losses], axis=0),
                               lw=1, label=_label(group))
        p_steps, positions = _seed_mean(group, "spectral_position")
        ax_p.plot(p_steps + 1, positions, marker="o", ms=3, lw=1, color=line.get_color(), label=_label(group))
    ax_loss.set(xscale="log", yscale="log", xlabel="step + 1", ylabel="training loss")
    ax_p.set(xscale="log", yscale="log", xlabel="step + 1", ylabel="spectral position P (window mean)")
    ax_p.legend(fontsize=8)
    return _save(fig, path)


def plot_components(runs: list[RunData], path: Path) -> Path:
    panels = [("loss_magnitude_normalized", "L̃"), ("network_magnitude_normalized", "Ñ"),
              ("spectral_position", "P"), (None, "Ñ · P")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for size, group in by_size(runs).items():
        steps, l_norm = _seed_mean(group, "loss_magnitude_normalized")
        _, n_norm = _seed_mean(group, "network_magnitude_normalized")
        _, position = _seed_mean(group, "spectral_position")
        for ax, values in zip(axes, (l_norm, n_norm, position, n_norm * position)):
            ax.plot(steps + 1, values, marker="o", ms=3, lw=1, label=_label(group))
    for ax, (_, title) in zip(axes, panels):
        ax.set(xscale="log", yscale="log", xlabel="step + 1", title=title)
    axes[-1].legend(fontsize=8)
    return _save(fig, path)


def power_law_fit(parameters: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
    """loss ≈ a · parameters^(−b), fitted in log–log space; returns (a, b)."""
    slope, intercept = np.polyfit(np.log(parameters), np.log(losses), 1)
    return float(np.exp(intercept)), float(-slope)


def plot_final_loss(runs: list[RunData], path: Path) -> Path | None:
    points = []
    for size, group in by_size(runs).items():
        finals = [next((r["eval_loss"] for r in reversed(run.rows) if _finite(r.get("eval_loss"))), None)
                  for run in group]
        finals = [f for f in finals if f is not None]
        if finals and group[0].parameters:
            points.append((group[0].parameters, float(np.mean(finals)), size))
    if len(points) < 2:
        return None
    parameters = np.array([p[0] for p in points], dtype=float)
    losses = np.array([p[1] for p in points])
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(parameters, losses, "o")
    a, b = power_law_fit(parameters, losses)
    grid = np.geomspace(parameters.min(), parameters.max(), 50)
    ax.plot(grid, a * grid ** -b, "--", label=f"{a:.3g} · N^(−{b:.3g})")
    for n, loss, size in points:
        ax.annotate(size, (n, loss), fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="final validation loss")
    ax.legend()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_runs(results, directory: Path) -> list[Path]:
    """The standard figures for a list of run results (anything with ``output_dir``)."""
    runs = [load_run(r.output_dir) for r in results]
    paths = [plot_loss_and_position(runs, directory / "loss_and_position.png"),
             plot_components(runs, directory / "components.png"),
             plot_final_loss(runs, directory / "final_loss.png")]
    return [p for p in paths if p is not None]
