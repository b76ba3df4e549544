"""Figure 6: convergence of the Hutchinson estimate of χ_net, and agreement across seeds.

Top (per spec, two panels): on a trained model — the largest trained run of the spec (lowest seed) that was
measured with plain Hutchinson (``measure.options: {readout: probed}``: probes through the head
too, as the paper's estimator) — χ_net of one fixed batch of training samples is estimated
``DRAWS`` times independently at each number of probes K. The coefficient of variation is the
standard deviation of those draws over their mean: measured, not the estimator's own standard
error (which is √(Σ Var/K) by construction and so decays as K^−½ whatever happens); that one is
drawn beside it as a check of its honesty. A power law is fitted to the measured CV. The left
panel shows the draws themselves against K, relative to the mean of all of them: the estimate
closing in on one value; the right panel the CV and its fit (the paper's "top right": the CV at a
given K and the fitted decay against the Hutchinson rate).

Bottom (per spec): P of every seed of every size measured with Hutchinson during training, one
thin line per seed: independent seeds should agree where the estimate is precise enough.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from specreach.paper.plots import colors, legend, plt, save, value_axis
from specreach.paper.runs import Labels, RunData, groups, key_text, seed_curves

PROBES = (1, 2, 4, 8, 16, 32, 64)
DRAWS = 32


def _measured_with(run: RunData) -> tuple[str, dict]:
    measure = run.run_spec.get("measure", {})
    return measure.get("estimator", ""), dict(measure.get("options") or {})


def convergence_runs(runs: list[RunData]) -> dict[str, RunData]:
    """Per spec, the trained run the draws are made on (see the module docstring)."""
    chosen: dict[str, RunData] = {}
    for run in runs:
        estimator, options = _measured_with(run)
        if run.phase != "train" or estimator != "hutchinson" or options.get("readout") != "probed":
            continue
        if not (run.directory / "final.pt").is_file():
            continue
        best = chosen.get(run.spec_name)
        if best is None or ((run.parameters or 0), -run.seed) > ((best.parameters or 0), -best.seed):
            chosen[run.spec_name] = run
    return chosen


def repeated_draws(run: RunData, probes: tuple[int, ...] | None = None, draws: int | None = None) -> dict:
    """χ_net of one fixed batch, ``draws`` independent estimates at each K, on the trained model
    (default: ``PROBES`` and ``DRAWS``, read when called)."""
    probes = PROBES if probes is None else probes
    draws = DRAWS if draws is None else draws
    import torch

    from specreach import measure_lnp
    from specreach.paper.checkpoints import first_training_batch, trained

    checkpoint = trained(run)
    measure = checkpoint.run_spec.measure
    batch = first_training_batch(checkpoint, measure.batch_size or checkpoint.run_spec.train.batch_size)
    _, options = _measured_with(run)
    by_k: dict[int, dict[str, Any]] = {}
    for k in probes:
        values, reported = [], []
        for draw in range(draws):
            generator = torch.Generator().manual_seed(1_000_003 * k + draw)
            result = measure_lnp(checkpoint.model, checkpoint.loss_fn, batch, estimator="hutchinson", probes=k,
                                 generator=generator, **options)
            values.append(result.chi_net_a)
            reported.append(result.chi_net_a_stderr / result.chi_net_a)
        mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
        cv = std / mean
        by_k[k] = {"cv": cv, "cv_stderr": cv / math.sqrt(2 * (draws - 1)), "mean_chi_net": mean,
                   "reported_relative_stderr": float(np.mean(reported)) if k > 1 else None,
                   "chi_net_draws": [float(v) for v in values]}
    ks = np.array(list(by_k), dtype=float)
    slope, intercept = np.polyfit(np.log(ks), np.log([by_k[k]["cv"] for k in by_k]), 1)
    return {"run": run.name, "parameters": run.parameters, "batch_samples": int(batch[0].shape[0]),
            "draws": draws, "options": options, "by_probes": by_k,
            "fit_exponent": float(slope), "fit_prefactor": float(np.exp(intercept))}


def seed_agreement(runs: list[RunData]) -> dict[str, dict]:
    """Per spec and size: P per window of every seed measured with Hutchinson, and the relative
    spread across seeds (standard deviation over |mean|, median over windows)."""
    found: dict[str, dict] = defaultdict(dict)
    for key, group in groups(runs).items():
        if len(group) < 2 or _measured_with(group[0])[0] != "hutchinson":
            continue
        curves = seed_curves(group, "spectral_position")
        if len(curves) < 2:
            continue
        spread = curves.values.std(axis=0, ddof=1) / np.abs(curves.mean)
        found[key.spec][key] = {"curves": curves, "parameters": group[0].parameters,
                                "median_relative_seed_spread": float(np.median(spread)),
                                "readout": _measured_with(group[0])[1].get("readout", "exact"),
                                "probes": group[0].run_spec.get("measure", {}).get("probes")}
    return dict(found)


def hutchinson_summary(runs: list[RunData], probes: tuple[int, ...] | None = None, draws: int | None = None) -> dict:
    return {"convergence": {spec: repeated_draws(run, probes, draws) for spec, run in convergence_runs(runs).items()},
            "seed_agreement": seed_agreement(runs)}


def summary_json(summary: dict) -> dict:
    return {"convergence": summary["convergence"],
            "seed_agreement": {spec: {key_text(key): {k: v for k, v in entry.items() if k != "curves"}
                                      for key, entry in entries.items()}
                               for spec, entries in summary["seed_agreement"].items()}}


def plot_hutchinson(summary: dict, path):
    """Top row: the draws and the CV of every spec with a trained run; bottom row: seed agreement."""
    rows: list[list[tuple[Any, str, Any]]] = []
    if summary["convergence"]:
        rows.append([(draw, spec, entry) for spec, entry in sorted(summary["convergence"].items())
                     for draw in (_draw_estimates, _draw_convergence)])
    if summary["seed_agreement"]:
        rows.append([(_draw_agreement, spec, entries) for spec, entries in sorted(summary["seed_agreement"].items())])
    columns = max(len(panels) for panels in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(6 * columns, 4.2 * len(rows)), squeeze=False)
    for row_axes, panels in zip(axes, rows):
        for ax, (draw, spec, entry) in zip(row_axes, panels):
            draw(ax, spec, entry)
        for ax in row_axes[len(panels):]:
            ax.set_axis_off()
    return save(fig, path)


def pooled_mean(entry: dict) -> float:
    """The mean of every probe drawn at every K (K probes per draw): the best estimate of χ_net."""
    by_k = entry["by_probes"]
    return sum(int(k) * v["mean_chi_net"] for k, v in by_k.items()) / sum(int(k) for k in by_k)


def _draw_estimates(ax, spec: str, entry: dict) -> None:
    reference = pooled_mean(entry)
    ks = np.array([int(k) for k in entry["by_probes"]], dtype=float)
    by_k = list(entry["by_probes"].values())
    for k, v in zip(ks, by_k):
        values = np.asarray(v.get("chi_net_draws", []), dtype=float) / reference
        ax.plot(np.full(len(values), k), values, ".", color="gray", alpha=0.4, ms=4)
    means = np.array([v["mean_chi_net"] for v in by_k]) / reference
    sds = np.array([v["cv"] * v["mean_chi_net"] for v in by_k]) / reference
    each = " (gray: each draw)" if any(v.get("chi_net_draws") for v in by_k) else ""
    ax.errorbar(ks, means, yerr=sds, fmt="o", capsize=3, label=f"mean ± sd of {entry['draws']} draws{each}")
    ax.axhline(1.0, color="black", lw=0.8, ls=":", label="mean of all draws at every K")
    ax.set(xscale="log", xlabel="probes K", ylabel="χ_net estimate / mean of all draws",
           title=f"{spec}: trained {entry['run']}, {entry['batch_samples']} training samples")
    ax.title.set_fontsize(8)
    legend(ax)


def _draw_convergence(ax, spec: str, entry: dict) -> None:
    ks = np.array(list(entry["by_probes"]), dtype=float)
    cv = np.array([v["cv"] for v in entry["by_probes"].values()])
    errors = np.array([v["cv_stderr"] for v in entry["by_probes"].values()])
    ax.errorbar(ks, cv, yerr=errors, fmt="o", capsize=3, label=f"measured: sd / mean over {entry['draws']} draws")
    ax.plot(ks, entry["fit_prefactor"] * ks ** entry["fit_exponent"], "--",
            label=f"fit: {entry['fit_prefactor']:.3g} · K^{entry['fit_exponent']:.2f}")
    ax.plot(ks, cv[0] * ks ** -0.5, ":", color="gray", label="K^−½ through K = 1")
    reported = [(k, v["reported_relative_stderr"]) for k, v in zip(ks, entry["by_probes"].values())
                if v["reported_relative_stderr"] is not None]
    if reported:
        ax.plot(*zip(*reported), "x", color="black", ms=5,
                label="the estimator's own s.e. / value (widened by t/z at few probes)")
    ax.set(xscale="log", yscale="log", xlabel="probes K", ylabel="coefficient of variation of χ_net",
           title=f"{spec}: trained {entry['run']}, {entry['batch_samples']} training samples")
    ax.title.set_fontsize(8)
    legend(ax)


def _draw_agreement(ax, spec: str, entries: dict) -> None:
    labels = Labels(entries)
    values = []
    for (key, entry), color in zip(entries.items(), colors(len(entries))):
        curves = entry["curves"]
        for index, seed in enumerate(curves.seeds):
            ax.plot(curves.steps + 1, curves.values[index], lw=0.8, color=color, alpha=0.8,
                    label=f"{labels(key, entry['parameters'])} (spread {entry['median_relative_seed_spread']:.0%})"
                    if index == 0 else None)
        values.append(curves.values.ravel())
    value_axis(ax, np.concatenate(values))
    first = next(iter(entries.values()))
    ax.set(xscale="log", xlabel="step + 1", ylabel="P, every seed",
           title=f"{spec}: every seed (K = {first['probes'] or 8}, readout {first['readout']}); "
                 "spread: median sd/|mean|")
    ax.title.set_fontsize(8)
    legend(ax)
