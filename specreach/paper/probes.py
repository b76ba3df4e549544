"""Figures 4 and 5: linear probes on trained and on random backbones.

Figure 4 is the ratio P(trained backbone) / P(random backbone) at matched normalized training
time τ, where from each measurement window only the top 10 % of P values are kept before
averaging (paper, Appendix C.1, Eq. 55: over-fitting lowers P late in probing). The ratio is
taken of the averages over seeds, as Eq. 55 takes it of averages; the band is the range of the
per-seed ratios (probe pairs share the seed). Figure 5 compares Ñ under full training with Ñ of
the two probes. One panel per spec, so the two datasets are side by side.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import numpy as np

from specreach.paper.plots import colors, legend, plt, save, value_axis
from specreach.paper.runs import GroupKey, Labels, RunData, finite, groups, key_text, seed_curves, seed_summary

TOP_FRACTION = 0.10  # keep the top 10 % of P values of each window (paper, Appendix C.1)
PHASES = ("train", "probe-trained", "probe-random")


def top_fraction_windows(rows: list[dict], total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per window: normalized time τ and the mean of its top 10 % P values (at least one)."""
    found: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        if finite(row.get("spectral_position")) and finite(row.get("window")):
            found[int(row["window"])].append((row["step"], row["spectral_position"]))
    taus, values = [], []
    for window in sorted(found):
        entries = found[window]
        keep = max(1, math.ceil(TOP_FRACTION * len(entries)))
        top = sorted((p for _, p in entries), reverse=True)[:keep]
        taus.append(statistics.fmean(s for s, _ in entries) / max(1, total_steps))
        values.append(statistics.fmean(top))
    return np.array(taus), np.array(values)


def probe_settings(runs: list[RunData]) -> dict[GroupKey, dict[str, list[RunData]]]:
    """Setting (phase left blank) → phase → runs by seed, for settings with both probes."""
    found: dict[GroupKey, dict[str, list[RunData]]] = defaultdict(dict)
    for key, group in groups(runs, phase=None).items():
        found[GroupKey(key.spec, key.parameterization, key.sweep, key.size, "")][key.phase] = group
    return {key: phases for key, phases in found.items()
            if phases.get("probe-trained") and phases.get("probe-random")}


def probe_summary(runs: list[RunData]) -> dict[GroupKey, dict]:
    summary = {}
    for key, phases in probe_settings(runs).items():
        trained = {run.seed: top_fraction_windows(run.rows, run.steps) for run in phases["probe-trained"]}
        random_ = {run.seed: top_fraction_windows(run.rows, run.steps) for run in phases["probe-random"]}
        seeds = sorted(set(trained) & set(random_))
        length = min([len(trained[s][1]) for s in seeds] + [len(random_[s][1]) for s in seeds]) if seeds else 0
        if not length:
            continue
        tau = np.mean([trained[s][0][:length] for s in seeds], axis=0)
        top_trained = np.array([trained[s][1][:length] for s in seeds])
        top_random = np.array([random_[s][1][:length] for s in seeds])
        ratio = top_trained.mean(axis=0) / top_random.mean(axis=0)
        per_seed = top_trained / top_random
        late = tau >= 0.5 if (tau >= 0.5).any() else np.arange(length) == length - 1  # the second half of probing
        magnitudes = {phase: seed_curves(phases[phase], "network_magnitude_normalized")
                      for phase in PHASES if phases.get(phase)}
        summary[key] = {
            # the backbone's size: the trained run's count (a probe's own count adds its head)
            "parameters": phases["train"][0].parameters if phases.get("train") else None,
            "seeds": seeds,
            "tau": tau.tolist(),
            "P_ratio_trained_over_random": ratio.tolist(),
            "P_ratio_per_seed": {str(s): per_seed[i].tolist() for i, s in enumerate(seeds)},
            "ratio_second_half": seed_summary([float(np.mean(per_seed[i][late])) for i in range(len(seeds))], seeds,
                                            ratio_of_means=float(np.mean(ratio[late]))),
            "windows_below_1": int((ratio < 1).sum()),
            "windows": int(length),
            "N_normalized": {phase: {"first": curves.summary(0), "last": curves.summary(len(curves) - 1)}
                             for phase, curves in magnitudes.items() if len(curves)},
            "_per_seed": per_seed,
            "_magnitudes": magnitudes,
        }
    return summary


def summary_json(summary: dict[GroupKey, dict]) -> dict:
    return {key_text(key): {k: v for k, v in entry.items() if not k.startswith("_")} for key, entry in summary.items()}


def _by_spec(summary: dict[GroupKey, dict]) -> dict[str, dict[GroupKey, dict]]:
    found: dict[str, dict[GroupKey, dict]] = defaultdict(dict)
    for key, entry in summary.items():
        found[key.spec][key] = entry
    return dict(found)


def plot_probes(summary: dict[GroupKey, dict], directory) -> list:
    specs = _by_spec(summary)
    fig, axes = plt.subplots(1, len(specs), figsize=(6 * len(specs), 4.4), squeeze=False)
    for ax, (spec, entries) in zip(axes[0], specs.items()):
        labels = Labels(entries)  # one panel per spec: the spec is in the title
        for (key, entry), color in zip(entries.items(), colors(len(entries))):
            tau = np.array(entry["tau"])
            ax.plot(tau, entry["P_ratio_trained_over_random"], marker="o", ms=2.5, lw=1, color=color,
                    label=labels(key, entry["parameters"]))
            if len(entry["seeds"]) > 1:
                ax.fill_between(tau, entry["_per_seed"].min(axis=0), entry["_per_seed"].max(axis=0), color=color,
                                alpha=0.18, lw=0)
        ax.axhline(1.0, color="gray", ls="--", lw=0.8)
        value_axis(ax, np.concatenate([e["_per_seed"].ravel() for e in entries.values()]))
        ax.set(xlabel="normalized training time τ", ylabel="P(trained backbone) / P(random backbone)",
               title=f"{spec}: top 10 % of P per window; band: range of per-seed ratios")
        ax.title.set_fontsize(8)
        legend(ax)
    ratio_path = save(fig, directory / "probe_ratio.png")

    fig, axes = plt.subplots(1, len(specs), figsize=(6 * len(specs), 4.4), squeeze=False)
    styles = {"train": "-", "probe-trained": "--", "probe-random": ":"}
    for ax, (spec, entries) in zip(axes[0], specs.items()):
        values = []
        for (key, entry), color in zip(entries.items(), colors(len(entries))):
            for phase, curves in entry["_magnitudes"].items():
                if not len(curves):
                    continue
                ax.plot(curves.steps + 1, curves.mean, styles[phase], marker="o", ms=2, lw=1, color=color,
                        label=f"{key.size}: {phase}")
                if curves.values.shape[0] > 1:
                    ax.fill_between(curves.steps + 1, curves.low, curves.high, color=color, alpha=0.12, lw=0)
                values.append(curves.values.ravel())
        value_axis(ax, np.concatenate(values) if values else [])
        ax.set(xscale="log", xlabel="step + 1", ylabel="Ñ", title=f"{spec}: full training against probes")
        ax.title.set_fontsize(9)
        legend(ax, ncol=2)
    return [ratio_path, save(fig, directory / "network_magnitude_probes.png")]
