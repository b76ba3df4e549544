"""Figure 8: equal compute. Each size trains for the steps its FLOP budget affords
(``train.flops``, C = 6 · parameters · tokens); one curve per budget of the final validation loss
and of P in the last measurement window against size, one row per spec (dataset).

The paper trains every size within one pass over the data; ``epochs`` in the summary says how many
passes a run made (where the data source can tell its size), and a run that saw data twice is
drawn hollow.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from specreach.paper.plots import colors, legend, plt, save, value_axis
from specreach.paper.runs import GroupKey, RunData, groups, key_text, seed_curves, seed_summary

BUDGET = "train.flops"


def _epochs(run: RunData, cache: dict) -> float | None:
    """Passes over the training set, where the data source knows its size without a download."""
    data = run.run_spec.get("data", {})
    key = (data.get("kind"), str(sorted((data.get("params") or {}).items())))
    if key not in cache:
        try:
            from specreach.plugins import get_plugin_manager

            source = get_plugin_manager().datasets()[data["kind"]].component(**data.get("params", {}))
            cache[key] = source.info().train_samples
        except Exception:  # a dataset not on this machine: the epochs stay unknown, never guessed
            cache[key] = None
    samples = cache[key]
    batch = run.run_spec.get("train", {}).get("batch_size")
    return run.steps * batch / samples if samples and batch else None


def isocompute_summary(runs: list[RunData]) -> dict[GroupKey, dict[float, list[dict]]]:
    """Setting (budget and size left out) → budget → one point per size, over seeds."""
    cache: dict = {}
    found: dict[GroupKey, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for key, group in groups([r for r in runs if BUDGET in r.sweep], leave_out=[BUDGET]).items():
        by_budget: dict[float, list[RunData]] = defaultdict(list)
        for run in group:
            by_budget[float(run.sweep[BUDGET])].append(run)
        setting = GroupKey(key.spec, key.parameterization, key.sweep, "", key.phase)
        for budget, members in by_budget.items():
            seeds = [run.seed for run in members]
            last_p = []
            for run in members:
                curves = seed_curves([run], "spectral_position")
                last_p.append(float(curves.values[0, -1]) if len(curves) else None)
            epochs = [_epochs(run, cache) for run in members]
            found[setting][budget].append({
                "size": key.size, "parameters": members[0].trainable_parameters, "steps": members[0].steps,
                "epochs": max(epochs) if all(e is not None for e in epochs) else None,
                "final_eval_loss": seed_summary([run.last("eval_loss") for run in members], seeds),
                "last_window_P": seed_summary(last_p, seeds),
            })
    return {setting: {budget: sorted(points, key=lambda p: p["parameters"])
                      for budget, points in sorted(budgets.items())} for setting, budgets in found.items()}


def summary_json(summary: dict[GroupKey, dict[float, list[dict]]]) -> dict:
    return {key_text(setting) or "isocompute": {f"{budget:g}": points for budget, points in budgets.items()}
            for setting, budgets in summary.items()}


def plot_isocompute(summary: dict[GroupKey, dict[float, list[dict]]], path):
    fig, axes = plt.subplots(len(summary), 2, figsize=(11, 4.2 * len(summary)), squeeze=False)
    for (setting, budgets), (ax_loss, ax_p) in zip(summary.items(), axes):
        p_values, labelled_hollow = [], False
        for (budget, points), color in zip(budgets.items(), colors(len(budgets))):
            x = np.array([p["parameters"] for p in points], float)
            for ax, metric in ((ax_loss, "final_eval_loss"), (ax_p, "last_window_P")):
                kept = [(xi, p[metric]) for xi, p in zip(x, points) if p[metric]["mean"] is not None]
                if not kept:
                    continue
                xs = np.array([xi for xi, _ in kept])
                mean = np.array([s["mean"] for _, s in kept])
                low = np.array([s["min"] for _, s in kept])
                high = np.array([s["max"] for _, s in kept])
                ax.plot(xs, mean, "-", color=color, lw=1, label=f"{budget:.2g} FLOPs" if ax is ax_loss else None)
                ax.errorbar(xs, mean, yerr=[mean - low, high - mean], fmt="none", ecolor=color, capsize=3)
                repeated = np.array([(p["epochs"] or 0) > 1 for p in points if p[metric]["mean"] is not None])
                ax.scatter(xs[~repeated], mean[~repeated], color=color, s=18, zorder=3)
                first_hollow = ax is ax_loss and repeated.any() and not labelled_hollow
                labelled_hollow = labelled_hollow or first_hollow
                ax.scatter(xs[repeated], mean[repeated], facecolors="white", edgecolors=color, s=18, zorder=3,
                           label="hollow: data seen more than once" if first_hollow else None)
                if metric == "last_window_P":
                    p_values += [low, high]
        value_axis(ax_p, np.concatenate(p_values) if p_values else [])
        title = key_text(setting)
        ax_loss.set(xscale="log", xlabel="parameters", ylabel="final validation loss", title=title)
        ax_p.set(xscale="log", xlabel="parameters", ylabel="P, last window", title="error bars: range over seeds")
        for ax in (ax_loss, ax_p):
            ax.title.set_fontsize(8)
        legend(ax_loss)
    return save(fig, path)
