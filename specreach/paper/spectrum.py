"""Figure 12: the explicit eNTK at initialization and after training — normalized eigenvalues
λ_k/Σλ, projections c_k of the loss gradient and their product — from the spectra the ``entk``
estimator saved at the first and the last measured step of each run (``spectra/``). With the
output restriction of the paper (a set of vocabulary indices × token positions of one fixed
sample) both steps see the same inputs, so the two spectra compare the same kernel's rows."""

from __future__ import annotations

import numpy as np

from specreach.paper.plots import legend, plt, save
from specreach.paper.runs import RunData


def spectrum_summary(runs: list[RunData]) -> dict[str, dict]:
    summary = {}
    for run in runs:
        files = sorted((run.directory / "spectra").glob("step*.npz"))
        if len(files) < 2:
            continue
        entry = {}
        for label, file in (("initialization", files[0]), ("end of training", files[-1])):
            data = np.load(file)
            eigenvalues, projections = data["eigenvalues"], data["projections"]
            normalized = eigenvalues / eigenvalues.sum()
            order = np.argsort(-normalized)
            entry[label] = {"step": int(data["step"]), "normalized_eigenvalues": normalized.tolist(),
                            "projections": projections.tolist(),
                            "P_from_spectrum": float((projections * normalized).sum()),
                            "top_eigenvalue_share": float(normalized[order[0]]),
                            "projection_weighted_log_eigenvalue": float(
                                np.sum(projections * np.log(np.clip(normalized, 1e-300, None))))}
        summary[run.name] = entry
    return summary


def summary_json(summary: dict[str, dict]) -> dict:
    return {name: {label: {k: v for k, v in e.items() if k not in ("normalized_eigenvalues", "projections")}
                   for label, e in entry.items()} for name, entry in summary.items()}


def plot_spectrum(summary: dict[str, dict], path):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, entry in summary.items():
        for label, style in (("initialization", ":"), ("end of training", "-")):
            lam = np.array(entry[label]["normalized_eigenvalues"])
            c = np.array(entry[label]["projections"])
            k = np.arange(1, len(lam) + 1)
            for ax, values in zip(axes, (lam, c, c * lam)):
                ax.plot(k, values, style, lw=1, label=f"{name}, {label} (step {entry[label]['step']})")
    for ax, title in zip(axes, ("λ_k / Σλ", "c_k (projection of the loss gradient)", "c_k λ_k / Σλ (sums to P)")):
        ax.set(xscale="log", yscale="log", xlabel="mode k (by eigenvalue)", title=title)
    legend(axes[0])
    return save(fig, path)
