"""Figure 3: the random-feature model on the power-law teacher, measured at initialization.

Left: the data spectrum λ_k ∝ k^(−α) of each α. Right: L̃, Ñ and P against α (mean and standard
error over seeds) with the predictions for P:

- E_z[P] for the arc-cosine kernel of the same inputs (math page §6; the expectation the
  measurement estimates, up to finite-width fluctuations of the kernel);
- the paper's relation (Eq. 11/46 with the data spectrum, through the kernel's linear Hermite
  term): ¼ Σ_k λ_k² / (Σ_k λ_k)² over the experiment's D inputs;
- its D → ∞ limit ¼ ζ(2α)/ζ(α)², which at small α is far from the finite-D value.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from specreach.paper.plots import colors, legend, plt, save
from specreach.paper.runs import RunData, group_key, key_text

ALPHA = "data.params.alpha"


def finite_dimension_relation(alpha: float, inputs: int) -> float:
    """¼ Σλ²/(Σλ)² for λ_k = k^(−α), k = 1 … inputs."""
    from specreach.data.powerlaw_teacher import powerlaw_spectrum

    spectrum = powerlaw_spectrum(inputs, alpha)
    return 0.25 * float(spectrum.square().sum() / spectrum.sum() ** 2)


def _mean_se(values: list) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
    return float(np.mean(values)), se


def rfm_summary(runs: list[RunData], theory_seeds: int = 5) -> dict[str, dict[float, dict]]:
    """Setting → α → components at step 0 (mean, standard error) and the predictions."""
    from specreach.data.powerlaw_teacher import PowerlawTeacher
    from specreach.paper.theory import arccos_kernel, expected_position, power_law_asymptote

    settings: dict[str, dict[float, list[RunData]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        data = run.run_spec.get("data", {})
        if data.get("kind") == "powerlaw-teacher" and run.phase == "train" and run.first_at(
                "spectral_position", 0) is not None:
            settings[key_text(group_key(run, leave_out=[ALPHA]))][float(data["params"]["alpha"])].append(run)
    summary: dict[str, dict[float, dict]] = {}
    for setting, by_alpha in settings.items():
        summary[setting] = {}
        for alpha, group in sorted(by_alpha.items()):
            at_zero = lambda key: [run.first_at(key, 0) for run in group]  # noqa: E731
            theory = []
            for run in sorted(group, key=lambda r: r.seed)[:theory_seeds]:
                x, _ = PowerlawTeacher(**run.run_spec["data"]["params"]).training_set()
                theory.append(expected_position(arccos_kernel(x), draws=2000, seed=0))
            inputs = int(group[0].run_spec["data"]["params"]["inputs"])
            summary[setting][alpha] = {
                "seeds": len(group),
                "inputs_D": inputs,
                "L_normalized": _mean_se(at_zero("loss_magnitude_normalized")),
                "N_normalized": _mean_se(at_zero("network_magnitude_normalized")),
                "P": _mean_se(at_zero("spectral_position")),
                "P_theory_arccos": _mean_se(theory),
                "P_relation_finite_D": finite_dimension_relation(alpha, inputs),
                "P_asymptote_infinite_D": power_law_asymptote(alpha) if alpha > 1 else math.nan,
            }
    return summary


def plot_rfm(summary: dict[str, dict[float, dict]], path) -> object:
    from specreach.data.powerlaw_teacher import powerlaw_spectrum

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.9))
    for setting_index, (setting, by_alpha) in enumerate(summary.items()):
        alphas = np.array(sorted(by_alpha))
        suffix = f" ({setting})" if len(summary) > 1 else ""
        if setting_index == 0:  # the data spectra are the same for every setting of the same D
            for alpha, color in zip(alphas, colors(len(alphas))):
                spectrum = powerlaw_spectrum(by_alpha[alpha]["inputs_D"], float(alpha)).numpy()
                axes[0].plot(np.arange(1, len(spectrum) + 1), spectrum, color=color, lw=1, label=f"α = {alpha:g}")
            axes[0].set(xscale="log", yscale="log", xlabel="k", ylabel="λ_k (Σλ = 1)", title="data spectrum")
        for ax, key, title, expected in ((axes[1], "L_normalized", "L̃", 4.0), (axes[2], "N_normalized", "Ñ", 1.0),
                                         (axes[3], "P", "P", None)):
            means = np.array([by_alpha[a][key][0] for a in alphas])
            errors = np.nan_to_num(np.array([by_alpha[a][key][1] for a in alphas]))
            ax.errorbar(alphas, means, yerr=errors, marker="o", capsize=3, label=f"measured ± s.e.{suffix}")
            if expected is not None and setting_index == 0:
                ax.axhline(expected, color="gray", ls="--", label=f"theory: {expected:g}")
                ax.set_ylim(0.8 * expected, 1.2 * expected)  # flat in α: shown on a ±20 % scale
            ax.set(xlabel="α", title=title)
        axes[3].plot(alphas, [by_alpha[a]["P_theory_arccos"][0] for a in alphas], "s--", ms=4,
                     label=f"E_z[P], arc-cosine kernel of the same inputs{suffix}")
        inputs = by_alpha[alphas[0]]["inputs_D"]
        axes[3].plot(alphas, [by_alpha[a]["P_relation_finite_D"] for a in alphas], "^-.", ms=4,
                     label=f"¼ Σλ²/(Σλ)², k ≤ D = {inputs} (Eq. 46){suffix}")
        axes[3].plot(alphas, [by_alpha[a]["P_asymptote_infinite_D"] for a in alphas], ":", color="gray",
                     label="¼ ζ(2α)/ζ(α)² (D → ∞)" if setting_index == 0 else None)
    axes[3].set(yscale="log")
    for ax in axes:
        legend(ax)
    return save(fig, path)
