"""Figure 9: standard parameterization and muP side by side: final validation loss and P in the
last window against size, one series per setting (spec, parameterization, sweep values), error
bars the range over seeds. Drawn when the runs hold both parameterizations."""

from __future__ import annotations

import numpy as np

from specreach.paper.plots import colors, legend, plt, save, value_axis
from specreach.paper.runs import GroupKey, Labels, RunData, groups, key_text, seed_curves, seed_summary


def parameterization_summary(runs: list[RunData]) -> dict[GroupKey, list[dict]]:
    if len({run.parameterization for run in runs if run.phase == "train"}) < 2:
        return {}
    series: dict[GroupKey, list[dict]] = {}
    for key, group in groups(runs).items():
        seeds = [run.seed for run in group]
        last_p = []
        for run in group:
            curves = seed_curves([run], "spectral_position")
            last_p.append(float(curves.values[0, -1]) if len(curves) else None)
        setting = GroupKey(key.spec, key.parameterization, key.sweep, "", key.phase)
        series.setdefault(setting, []).append({
            "size": key.size, "parameters": group[0].parameters,
            "final_eval_loss": seed_summary([run.last("eval_loss") for run in group], seeds),
            "last_window_P": seed_summary(last_p, seeds)})
    return {key: sorted(points, key=lambda p: p["parameters"] or 0) for key, points in series.items()}


def summary_json(summary: dict[GroupKey, list[dict]]) -> dict:
    return {key_text(key): points for key, points in summary.items()}


def plot_parameterizations(summary: dict[GroupKey, list[dict]], path):
    labels = Labels(summary)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    p_values = []
    for (key, points), color in zip(summary.items(), colors(len(summary))):
        marker = "s" if key.parameterization == "mup" else "o"
        for ax, metric in zip(axes, ("final_eval_loss", "last_window_P")):
            kept = [p for p in points if p[metric]["mean"] is not None]
            if not kept:
                continue
            x = np.array([p["parameters"] for p in kept], float)
            mean = np.array([p[metric]["mean"] for p in kept])
            low = np.array([p[metric]["min"] for p in kept])
            high = np.array([p[metric]["max"] for p in kept])
            ax.errorbar(x, mean, yerr=[mean - low, high - mean], fmt=f"{marker}-", ms=4, capsize=3, color=color,
                        label=labels.setting(key))
            if metric == "last_window_P":
                p_values += [low, high]
    axes[0].set(xscale="log", yscale="log", xlabel="parameters", ylabel="final validation loss",
                title="error bars: range over seeds")
    value_axis(axes[1], np.concatenate(p_values) if p_values else [])
    axes[1].set(xscale="log", xlabel="parameters", ylabel="P, last window")
    legend(axes[1])
    return save(fig, path)
