"""Figure 12: the explicit eNTK at initialization and after training — normalized eigenvalues
λ_k/Σλ, projections c_k of the loss gradient and their product — from the spectra the ``entk``
estimator saved at the first and the last measured step of each run (``spectra/``). With the
output restriction of the paper (a set of vocabulary indices × token positions of one fixed
sample) both steps see the same inputs, so the two spectra compare the same kernel's rows."""

from __future__ import annotations

import numpy as np

from specreach.paper.plots import colors, legend, plt, save
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
                            "gradient_median_eigenvalue": _median_eigenvalue(normalized, projections)}
        summary[run.name] = entry
    return summary


def _median_eigenvalue(normalized: np.ndarray, projections: np.ndarray) -> float:
    """The normalized eigenvalue above which half of the loss gradient lies (Σ c_k = 1)."""
    order = np.argsort(-normalized)
    cumulative = np.cumsum(projections[order])
    return float(normalized[order][min(np.searchsorted(cumulative, 0.5 * cumulative[-1]), len(order) - 1)])


def summary_json(summary: dict[str, dict]) -> dict:
    return {name: {label: {k: v for k, v in e.items() if k not in ("normalized_eigenvalues", "projections")}
                   for label, e in entry.items()} for name, entry in summary.items()}


def plot_spectrum(summary: dict[str, dict], path):
    """The paper's three panels per mode k, and the cumulative projection mass against the
    normalized eigenvalue: the share of the loss gradient on modes of eigenvalue ≥ λ (a shift of
    the curve to smaller λ is the gradient moving into the spectral tail)."""
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    for (name, entry), color in zip(summary.items(), colors(len(summary))):
        for label, style in (("initialization", ":"), ("end of training", "-")):
            lam = np.array(entry[label]["normalized_eigenvalues"])
            c = np.array(entry[label]["projections"])
            k = np.arange(1, len(lam) + 1)
            line = f"{name}, {label} (step {entry[label]['step']}, P = {entry[label]['P_from_spectrum']:.2g})"
            for ax, values in zip(axes, (lam, c, c * lam)):
                ax.plot(k, values, style, lw=0.8, color=color, label=line)
            order = np.argsort(-lam)
            axes[3].plot(lam[order], np.cumsum(c[order]), style, lw=1.2, color=color)
    for ax, title in zip(axes, ("λ_k / Σλ", "c_k (projection of the loss gradient)", "c_k λ_k / Σλ (sums to P)")):
        ax.set(xscale="log", yscale="log", xlabel="mode k (by eigenvalue)", title=title)
    axes[3].set(xscale="log", xlabel="λ / Σλ", ylabel="Σ c_k over modes with λ_k ≥ λ",
                title="where the loss gradient lies along the spectrum")
    axes[3].invert_xaxis()
    legend(axes[0])
    return save(fig, path)
