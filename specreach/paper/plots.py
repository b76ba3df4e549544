"""Figures of training dynamics, drawn from recorded runs only (metrics tables and ``run.json``),
so they can be drawn again long after the runs, without MLflow.

- ``loss_and_position.png`` (paper Figure 1): training loss and P against step, one curve per
  setting; P averaged per measurement window — windows of one step (the schedule's initial
  steps) are plotted as they are.
- ``components.png`` (Figures 10–11): L̃, Ñ, P and Ñ·P per window.
- ``final_loss.png`` (Figure 1 insets, Figure 7): final validation loss against parameter count,
  titled with the spec, the seed mean with a band over seeds; a power law is fitted per series
  (never across parameterizations or sweep values) only where at least three sizes have at least
  two seeds each, and the figure says so where none is.
- ``test_loss.png`` (Figure 7): validation loss during training.
- ``loss_change.png`` (Figure 2): the loss change on B across an update, split into the linear
  term −η·D and the remainder.

Every curve is the mean over the seeds of one setting, with a band from the lowest to the highest
seed where there are several; P, which can be negative, is drawn on a symmetric-log axis.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import Formatter, LogLocator, NullFormatter  # noqa: E402

from specreach.paper.runs import (  # noqa: E402
    GroupKey, Labels, RunData, SeedCurves, finite, groups, load_run, seed_curves, seed_summary,
)

MIN_FIT_SIZES = 3  # a power law through two points fits anything
MIN_FIT_SEEDS = 2  # at every size: one seed's noise is not a trend


# --- axes ------------------------------------------------------------------------------------------

def value_axis(ax, values: Iterable[float], axis: str = "y") -> None:
    """Log scale for positive data; symmetric-log (linear within the smallest decade) when any
    value is zero or negative, with a line at zero."""
    numbers = np.array([v for v in np.ravel(list(values)) if finite(v)], dtype=float)
    positive = np.abs(numbers[numbers != 0])
    if len(numbers) and (numbers <= 0).any():
        threshold = 10 ** math.floor(math.log10(positive.min())) if len(positive) else 1.0
        getattr(ax, f"set_{axis}scale")("symlog", linthresh=threshold, linscale=0.3)
        (ax.axhline if axis == "y" else ax.axvline)(0, color="gray", lw=0.6)
    elif len(numbers):
        getattr(ax, f"set_{axis}scale")("log")


def tidy(ax) -> None:
    """Readable ticks: on log axes only decades are labelled, or 1-2-5 steps where the axis spans
    less than two decades and finer steps below one (minor labels of a short log axis otherwise run
    into each other)."""
    ax.tick_params(labelsize=7)
    for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or min(limits) <= 0:
            continue
        axis.set_minor_formatter(NullFormatter())
        decades = math.log10(max(limits) / min(limits))
        if decades < 2:
            axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades >= 1 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
            axis.set_major_formatter(DistinctFormatter())


class DistinctFormatter(Formatter):
    """Tick labels with three significant digits, or as many more as it takes to tell them apart (a
    narrow log axis falls back to linear ticks such as 5.531, 5.532, … which ``.3g`` would all call 5.53)."""

    def format_ticks(self, values):
        for digits in range(3, 10):
            labels = [f"{value:.{digits}g}" for value in values]
            if len(set(labels)) == len(labels):
                break
        return labels

    def __call__(self, value, pos=None):
        return f"{value:.3g}"


def band(ax, x, curves: SeedCurves, color, label: str | None = None, values: np.ndarray | None = None, **style):
    """The seed mean as a line with markers, and the range over seeds as a band."""
    values = curves.values if values is None else values
    (line,) = ax.plot(x, values.mean(axis=0), marker="o", ms=2.5, lw=1, color=color, label=label, **style)
    if values.shape[0] > 1:
        ax.fill_between(x, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.18, lw=0)
    return line


def colors(count: int):
    cmap = plt.get_cmap("viridis" if count > 10 else "tab10")
    return [cmap(i / max(1, count - 1)) if count > 10 else cmap(i) for i in range(count)]


def save(fig, path: Path, bottom: float = 0.0) -> Path:
    """``bottom``: the figure's height kept free under the axes (for a note)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:
        tidy(ax)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **kwargs)


def seed_note(groups_: dict) -> str:
    counts = sorted({len(g) for g in groups_.values()})
    text = "/".join(map(str, counts))
    spread = ", band: range over seeds" if max(counts) > 1 else ""
    return f"mean over {text} seed{'s' if counts != [1] else ''}{spread}"


# --- which runs can be drawn -----------------------------------------------------------------------

def measured(group: list[RunData], key: str = "spectral_position") -> bool:
    return len(seed_curves(group, key)) >= 2


def dynamics_groups(runs: list[RunData]) -> dict[GroupKey, list[RunData]]:
    """Trained settings with at least two measurement windows (one-step runs have no dynamics)."""
    return {key: group for key, group in groups(runs).items() if measured(group)}


# --- Figure 1: loss and P against step ---------------------------------------------------------------

def by_spec(found: dict[GroupKey, list[RunData]]) -> dict[str, dict[GroupKey, list[RunData]]]:
    """Groups per spec: figures give each spec (dataset, parameterization) a row of its own."""
    rows: dict[str, dict[GroupKey, list[RunData]]] = {}
    for key, group in found.items():
        rows.setdefault(key.spec, {})[key] = group
    return rows


def plot_loss_and_position(runs: list[RunData], path: Path) -> Path | None:
    found = dynamics_groups(runs)
    if not found:
        return None
    rows = by_spec(found)
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 4.2 * len(rows)), squeeze=False)
    for (spec, row), (ax_loss, ax_p) in zip(rows.items(), axes):
        labels = Labels(row)
        all_p = []
        for (key, group), color in zip(row.items(), colors(len(row))):
            losses = _aligned([run.values("loss") for run in group])
            if losses is not None:
                steps, values = losses
                ax_loss.plot(steps + 1, values.mean(axis=0), lw=0.8, color=color)
                if len(group) > 1:
                    ax_loss.fill_between(steps + 1, values.min(axis=0), values.max(axis=0), color=color, alpha=0.15,
                                         lw=0)
            curves = seed_curves(group, "spectral_position")
            band(ax_p, curves.steps + 1, curves, color, labels(key, group[0].parameters))
            all_p.append(curves.values)
        ax_loss.set(xscale="log", yscale="log", xlabel="step + 1", ylabel="training loss", title=spec)
        value_axis(ax_p, np.concatenate([v.ravel() for v in all_p]))
        ax_p.set(xscale="log", xlabel="step + 1 (window mean; single steps at the start)",
                 ylabel="spectral position P", title=f"{spec}: {seed_note(row)}")
        ax_p.title.set_fontsize(9)
        legend(ax_p)
    return save(fig, path)


def _aligned(series: list[list[tuple[int, float]]]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-step values of several runs on the steps they all have."""
    series = [dict(s) for s in series if s]
    if not series:
        return None
    steps = sorted(set.intersection(*(set(s) for s in series)))
    if len(steps) < 2:
        return None
    return np.array(steps, dtype=float), np.array([[s[step] for step in steps] for s in series])


# --- Figures 10-11: every component ------------------------------------------------------------------

COMPONENTS = (("loss_magnitude_normalized", "L̃ (normalized loss magnitude)"),
              ("network_magnitude_normalized", "Ñ (normalized network magnitude)"),
              ("spectral_position", "P (spectral position)"), (None, "Ñ · P"))


def plot_components(runs: list[RunData], path: Path) -> Path | None:
    found = dynamics_groups(runs)
    if not found:
        return None
    rows = by_spec(found)
    fig, axes = plt.subplots(len(rows), 4, figsize=(18, 3.9 * len(rows)), squeeze=False)
    for (spec, row), row_axes in zip(rows.items(), axes):
        labels = Labels(row)
        plotted: dict[int, list[np.ndarray]] = {i: [] for i in range(4)}
        for (key, group), color in zip(row.items(), colors(len(row))):
            n_curves = seed_curves(group, "network_magnitude_normalized")
            p_curves = seed_curves(group, "spectral_position")
            for index, (metric, _) in enumerate(COMPONENTS):
                if metric is None:  # Ñ·P per seed, on the windows both have
                    length = min(len(n_curves), len(p_curves))
                    curves = SeedCurves(p_curves.steps[:length],
                                        n_curves.values[:, :length] * p_curves.values[:, :length], p_curves.seeds)
                else:
                    curves = seed_curves(group, metric)
                if len(curves):
                    band(row_axes[index], curves.steps + 1, curves, color, labels(key, group[0].parameters))
                    plotted[index].append(curves.values)
        for index, (ax, (_, title)) in enumerate(zip(row_axes, COMPONENTS)):
            value_axis(ax, np.concatenate([v.ravel() for v in plotted[index]]) if plotted[index] else [])
            ax.set(xscale="log", xlabel="step + 1", title=f"{spec}: {title}" if len(rows) > 1 else title)
            ax.title.set_fontsize(9)
        legend(row_axes[1])
    fig.suptitle(seed_note(found), fontsize=9)
    return save(fig, path)


# --- Figure 7: validation loss during training -----------------------------------------------------

def plot_test_loss(runs: list[RunData], path: Path) -> Path | None:
    found = {}
    for key, group in groups(runs).items():
        aligned = _aligned([run.values("eval_loss") for run in group])
        if aligned is not None:
            found[key] = (group, aligned)
    if not found:
        return None
    labels = Labels(found)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for (key, (group, (steps, values))), color in zip(found.items(), colors(len(found))):
        curves = SeedCurves(steps, values, [run.seed for run in group])
        band(ax, steps, curves, color, labels(key, group[0].parameters))
    ax.set(xscale="log", yscale="log", xlabel="step", ylabel="validation loss",
           title=seed_note({k: v[0] for k, v in found.items()}))
    legend(ax)
    return save(fig, path)


# --- final loss against size -------------------------------------------------------------------------

def power_law_fit(parameters: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
    """loss ≈ a · parameters^(−b), fitted in log–log space; returns (a, b)."""
    if len(set(parameters.tolist())) < MIN_FIT_SIZES:
        raise ValueError(f"a power law needs at least {MIN_FIT_SIZES} sizes, got {len(set(parameters.tolist()))}")
    slope, intercept = np.polyfit(np.log(parameters), np.log(losses), 1)
    return float(np.exp(intercept)), float(-slope)


def final_loss_series(runs: list[RunData]) -> dict[GroupKey, list[dict]]:
    """Per setting without the size (a series across sizes): one point per size, over seeds."""
    series: dict[GroupKey, list[dict]] = {}
    for key, group in groups(runs).items():
        finals = [run.last("eval_loss") for run in group]
        if group[0].parameters is None or not any(f is not None for f in finals):
            continue
        setting = GroupKey(key.spec, key.parameterization, key.sweep, "", key.phase)
        series.setdefault(setting, []).append(
            {"size": key.size, "parameters": group[0].parameters,
             **seed_summary(finals, [run.seed for run in group])})
    return {key: sorted(points, key=lambda p: p["parameters"]) for key, points in series.items()}


def fit_series(series: dict[GroupKey, list[dict]]) -> dict[GroupKey, tuple[float, float]]:
    """Power laws through the seed means of the series with enough sizes and seeds (:func:`why_not_fitted`)."""
    fits = {}
    for key, points in series.items():
        if why_not_fitted(points) is None:
            points = [p for p in points if p["mean"] is not None]
            fits[key] = power_law_fit(np.array([p["parameters"] for p in points], float),
                                      np.array([p["mean"] for p in points]))
    return fits


def why_not_fitted(points: list[dict]) -> str | None:
    """Why a series gets no power law (None: it gets one): fewer than MIN_FIT_SIZES sizes with at
    least MIN_FIT_SEEDS seeds each."""
    usable = {p["parameters"] for p in points if p["mean"] is not None and p["seeds"] >= MIN_FIT_SEEDS}
    if len(usable) >= MIN_FIT_SIZES:
        return None
    seeds = sorted({p["seeds"] for p in points if p["mean"] is not None})
    return (f"{len(points)} size{'s' * (len(points) != 1)} with {'/'.join(map(str, seeds))} "
            f"seed{'s' * (seeds != [1])}")


def plot_final_loss(runs: list[RunData], path: Path) -> Path | None:
    series = final_loss_series(runs)
    if not any(len(points) >= 2 for points in series.values()):
        return None
    labels = Labels(series)
    fits = fit_series(series)
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for (key, points), color in zip(series.items(), colors(len(series))):
        points = [p for p in points if p["mean"] is not None]
        x = np.array([p["parameters"] for p in points], float)
        y = np.array([p["mean"] for p in points])
        ax.plot(x, y, marker="o", ms=4, lw=1, color=color, label=labels.setting(key) if len(series) > 1 else None)
        if any(p["seeds"] > 1 for p in points):
            ax.fill_between(x, [p["min"] for p in points], [p["max"] for p in points], color=color, alpha=0.18, lw=0)
        if key in fits:
            a, b = fits[key]
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.plot(grid, a * grid ** -b, "--", color=color, lw=1, label=f"fit: {a:.3g} · parameters^{-b:+.3g}")
        for point in points:
            ax.annotate(point["size"], (point["parameters"], point["mean"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="final validation loss",
           title=f"{', '.join(sorted({key.spec for key in series}))}: final validation loss")
    fig.text(0.5, 0.01, final_loss_note(series, fits), ha="center", va="bottom", fontsize=7, wrap=True)
    legend(ax)
    return save(fig, path, bottom=0.08)


def final_loss_note(series: dict[GroupKey, list[dict]], fits: dict) -> str:
    """What the figure shows of seeds and fits, and why a series has no power law."""
    seeds = sorted({p["seeds"] for points in series.values() for p in points if p["mean"] is not None})
    note = f"mean over {'/'.join(map(str, seeds))} seed{'s' * (seeds != [1])}" + (
        ", band: range over seeds" if seeds[-1] > 1 else "")
    missing = {key: why for key, points in series.items() if key not in fits and (why := why_not_fitted(points))}
    if missing:
        labels = Labels(series)
        reasons = "; ".join(f"{labels.setting(key)}: {why}" if len(series) > 1 else why
                            for key, why in missing.items())
        note += (f". No power law fitted ({reasons}): a fit needs ≥ {MIN_FIT_SIZES} sizes with ≥ {MIN_FIT_SEEDS} "
                 "seeds each")
    return note


# --- Figure 2: linear and non-linear parts of the loss change --------------------------------------

def plot_loss_change(runs: list[RunData], path: Path) -> Path | None:
    """ΔL_B across the update, the linear term −η·D and the remainder, per window."""
    found = {}
    for key, group in dynamics_groups(runs).items():
        actual = seed_curves(group, "delta_loss_b")
        linear = seed_curves(group, "delta_loss_b_sgd_linear")
        if len(actual) >= 2 and len(linear) >= 2 and len(actual) == len(linear):
            found[key] = (group, actual, linear)
    if not found:
        return None
    labels = Labels(found)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharex=True)
    titles = ("ΔL_B: loss change on B across the update", "linear term −η · D = −η ⟨∇L_B, ∇L_A⟩",
              "remainder ΔL_B − (−η · D)")
    drawn: list[list[np.ndarray]] = [[], [], []]
    for (key, (group, actual, linear)), color in zip(found.items(), colors(len(found))):
        for index, values in enumerate((actual.values, linear.values, actual.values - linear.values)):
            band(axes[index], actual.steps + 1, actual, color, labels(key, group[0].parameters), values=values)
            drawn[index].append(values)
    for ax, title, values in zip(axes, titles, drawn):
        value_axis(ax, np.concatenate([v.ravel() for v in values]))
        ax.set(xscale="log", xlabel="step + 1", title=title)
        ax.title.set_fontsize(9)
    fig.suptitle("−η·D is the linear term of an SGD step; with AdamW the update is preconditioned, so the "
                 "remainder holds the preconditioning as well as the non-linear part. "
                 + seed_note({key: value[0] for key, value in found.items()}),
                 fontsize=8)
    legend(axes[0])
    return save(fig, path)


def plot_runs(results, directory: Path) -> list[Path]:
    """The training-dynamics figures for a list of run results (anything with ``output_dir``)."""
    runs = [load_run(r.output_dir) for r in results]
    paths = [plot_loss_and_position(runs, Path(directory) / "loss_and_position.png"),
             plot_components(runs, Path(directory) / "components.png"),
             plot_final_loss(runs, Path(directory) / "final_loss.png")]
    return [p for p in paths if p is not None]
