"""``specreach report``: the paper's figures drawn from recorded runs (their metrics tables,
``run.json`` and spectra), so it works without MLflow and long after the runs.

Every figure is drawn when the runs hold what it needs:

| figure | paper | needs |
|---|---|---|
| loss_and_position, components, final_loss | 1, 10–11 | trained runs |
| test_loss | 7 | evaluations during training (``train.eval_every``) |
| rfm_validation | 3 | runs on ``powerlaw-teacher`` measured at step 0 |
| probe_ratio, network_magnitude_probes | 4, 5 | linear-probe runs (``probe`` section) |
| spectrum | 12 | spectra saved by the ``entk`` estimator |
| isocompute | 8 | a sweep over ``train.flops`` |
| hutchinson_convergence | 6 | a sweep over ``measure.probes`` |
| parameterizations | 9 | standard and muP runs side by side |

``summary.json`` beside the figures holds the numbers they show.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

from specreach.paper.plots import (
    RunData, _finite, _save, by_size, load_run, plot_components, plot_final_loss, plot_loss_and_position, plt,
    power_law_fit, window_means,
)

TOP_FRACTION = 0.10  # linear probes: keep the top 10 % of P values of each window (paper, Appendix C.1)


def collect_runs(paths: list[Path]) -> list[RunData]:
    """Runs under each path: a spec's output directory, its ``runs/`` folder, or one run directory."""
    found: dict[Path, RunData] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no run directory at {path}")
        candidates = [path] if (path / "metrics.csv").exists() else run_directories(path)
        for directory in candidates:
            found[directory.resolve()] = load_run(directory)
    if not found:
        raise FileNotFoundError(f"no runs (metrics.csv) under {', '.join(map(str, paths))}")
    return list(found.values())


def run_directories(root: Path) -> list[Path]:
    """Directories written by runs (metrics.csv beside run.json), not MLflow's artifact copies."""
    return sorted(p.parent for p in Path(root).rglob("run.json") if (p.parent / "metrics.csv").exists())


def _spec(run: RunData) -> dict:
    return run.meta.get("run_spec", {})


def _phase(run: RunData) -> str:
    return run.meta.get("phase", "train")


def _first(rows, key, step=None):
    for row in rows:
        if _finite(row.get(key)) and (step is None or row["step"] == step):
            return row[key]
    return None


def _last(rows, key):
    for row in reversed(rows):
        if _finite(row.get(key)):
            return row[key]
    return None


def _mean_se(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return statistics.fmean(values), se


# --- Figure 1, 7, 10-11 ---------------------------------------------------------------------------

def scaling_summary(runs: list[RunData]) -> dict:
    summary = {}
    for size, group in by_size(runs).items():
        steps, positions = _seed_windows(group, "spectral_position")
        summary[size] = {
            "parameters": group[0].parameters,
            "seeds": len(group),
            "final_eval_loss": _mean_se([_last(r.rows, "eval_loss") for r in group])[0],
            "final_train_loss": _mean_se([_last(r.rows, "loss") for r in group])[0],
            "first_window_P": float(positions[0]) if len(positions) else None,
            "last_window_P": float(positions[-1]) if len(positions) else None,
            "first_window_N_normalized": float(_seed_windows(group, "network_magnitude_normalized")[1][0])
            if len(positions) else None,
            "last_window_N_normalized": float(_seed_windows(group, "network_magnitude_normalized")[1][-1])
            if len(positions) else None,
        }
    return summary


def _seed_windows(group, key):
    curves = [window_means(run.rows, key) for run in group]
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return np.array([]), np.array([])
    length = min(len(c[0]) for c in curves)
    return np.mean([c[0][:length] for c in curves], 0), np.mean([c[1][:length] for c in curves], 0)


def plot_test_loss(runs: list[RunData], path: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(5, 4))
    drawn = False
    for size, group in by_size(runs).items():
        series = [[(r["step"], r["eval_loss"]) for r in run.rows if _finite(r.get("eval_loss"))] for run in group]
        if min(len(s) for s in series) < 2:
            continue
        length = min(len(s) for s in series)
        steps = [p[0] for p in series[0][:length]]
        ax.plot(steps, np.mean([[p[1] for p in s[:length]] for s in series], 0), marker="o", ms=3, label=size)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xscale="log", yscale="log", xlabel="step", ylabel="validation loss")
    ax.legend(fontsize=8)
    return _save(fig, path)


# --- Figure 3 --------------------------------------------------------------------------------------

def rfm_summary(runs: list[RunData], theory_seeds: int = 5) -> dict:
    from specreach.data.powerlaw_teacher import PowerlawTeacher
    from specreach.paper.theory import arccos_kernel, expected_position, power_law_asymptote

    by_alpha: dict[float, list[RunData]] = defaultdict(list)
    for run in runs:
        data = _spec(run).get("data", {})
        if data.get("kind") == "powerlaw-teacher" and _phase(run) == "train":
            by_alpha[float(data["params"]["alpha"])].append(run)
    summary = {}
    for alpha, group in sorted(by_alpha.items()):
        first = lambda key: [_first(r.rows, key, step=0) for r in group]  # noqa: E731
        theory = []
        for run in sorted(group, key=lambda r: r.meta.get("seed", 0))[:theory_seeds]:
            x, _ = PowerlawTeacher(**_spec(run)["data"]["params"]).training_set()
            theory.append(expected_position(arccos_kernel(x), draws=2000, seed=0))
        summary[alpha] = {
            "seeds": len(group),
            "L_normalized": _mean_se(first("loss_magnitude_normalized")),
            "N_normalized": _mean_se(first("network_magnitude_normalized")),
            "P": _mean_se(first("spectral_position")),
            "P_theory_arccos": _mean_se(theory),
            "P_asymptote": power_law_asymptote(alpha) if alpha > 1 else math.nan,
        }
    return summary


def plot_rfm(summary: dict, path: Path) -> Path:
    alphas = np.array(list(summary))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, title, expected in ((axes[0], "L_normalized", "L̃", 4.0), (axes[1], "N_normalized", "Ñ", 1.0),
                                     (axes[2], "P", "P", None)):
        means = np.array([summary[a][key][0] for a in alphas])
        errors = np.array([summary[a][key][1] for a in alphas])
        ax.errorbar(alphas, means, yerr=np.nan_to_num(errors), marker="o", capsize=3, label="measured")
        if expected is not None:
            ax.axhline(expected, color="gray", ls="--", label=f"theory: {expected:g}")
            ax.set_ylim(0.8 * expected, 1.2 * expected)  # flat in α: show it on a ±20 % scale
        ax.set(xlabel="α", title=title)
    theory = np.array([summary[a]["P_theory_arccos"][0] for a in alphas])
    axes[2].plot(alphas, theory, "s--", label="E_z[P], arc-cosine kernel")
    asymptote = np.array([summary[a]["P_asymptote"] for a in alphas])
    axes[2].plot(alphas, asymptote, ":", color="gray", label="¼ ζ(2α)/ζ(α)² (scaling only)")
    for ax in axes:
        ax.legend(fontsize=7)
    return _save(fig, path)


# --- Figures 4, 5 ----------------------------------------------------------------------------------

def top_fraction_windows(rows: list[dict], total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per window: normalized time τ and the mean of its top 10 % P values (at least one)."""
    groups: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        if _finite(row.get("spectral_position")) and _finite(row.get("window")):
            groups[int(row["window"])].append((row["step"], row["spectral_position"]))
    taus, values = [], []
    for window in sorted(groups):
        entries = groups[window]
        keep = max(1, math.ceil(TOP_FRACTION * len(entries)))
        top = sorted((p for _, p in entries), reverse=True)[:keep]
        taus.append(statistics.fmean(s for s, _ in entries) / max(1, total_steps))
        values.append(statistics.fmean(top))
    return np.array(taus), np.array(values)


def probe_summary(runs: list[RunData]) -> dict:
    pairs: dict[str, dict[str, list[RunData]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        pairs[run.size][_phase(run)].append(run)
    summary = {}
    for size, phases in pairs.items():
        if not phases.get("probe-trained") or not phases.get("probe-random"):
            continue
        curves = {}
        for phase in ("probe-trained", "probe-random"):
            windows = [top_fraction_windows(r.rows, r.meta.get("steps", 1)) for r in phases[phase]]
            length = min(len(w[0]) for w in windows)
            curves[phase] = (np.mean([w[0][:length] for w in windows], 0), np.mean([w[1][:length] for w in windows], 0))
        length = min(len(curves["probe-trained"][0]), len(curves["probe-random"][0]))
        tau = curves["probe-trained"][0][:length]
        ratio = curves["probe-trained"][1][:length] / curves["probe-random"][1][:length]
        n_curves = {phase: _seed_windows(phases[phase], "network_magnitude_normalized")
                    for phase in ("train", "probe-trained", "probe-random") if phases.get(phase)}
        summary[size] = {
            "tau": tau.tolist(), "P_ratio_trained_over_random": ratio.tolist(),
            "late_ratio_mean": float(np.mean(ratio[len(ratio) // 2:])) if len(ratio) else None,
            "N_normalized": {phase: {"first": float(v[1][0]), "last": float(v[1][-1])} for phase, v in n_curves.items()
                             if len(v[1])},
            "_n_curves": n_curves,
        }
    return summary


def plot_probes(summary: dict, directory: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(5, 4))
    for size, entry in summary.items():
        ax.plot(entry["tau"], entry["P_ratio_trained_over_random"], marker="o", ms=3, label=size)
    ax.axhline(1.0, color="gray", ls="--")
    ax.set(yscale="log", xlabel="normalized training time τ", ylabel="P(trained backbone) / P(random backbone)",
           title="linear probes, top 10 % of P per window")
    ax.legend(fontsize=8)
    ratio_path = _save(fig, directory / "probe_ratio.png")
    fig, ax = plt.subplots(figsize=(5, 4))
    styles = {"train": "-", "probe-trained": "--", "probe-random": ":"}
    for size, entry in summary.items():
        for phase, (steps, values) in entry["_n_curves"].items():
            ax.plot(steps + 1, values, styles[phase], marker="o", ms=3, label=f"{size} {phase}")
    ax.set(xscale="log", yscale="log", xlabel="step + 1", ylabel="Ñ", title="full training against probes")
    ax.legend(fontsize=7)
    return [ratio_path, _save(fig, directory / "network_magnitude_probes.png")]


# --- Figure 12 -------------------------------------------------------------------------------------

def spectrum_summary(runs: list[RunData], directories: dict[str, Path]) -> dict:
    summary = {}
    for run in runs:
        files = sorted((directories[run.name] / "spectra").glob("step*.npz"))
        if len(files) < 1:
            continue
        entry = {}
        for label, file in (("initialization", files[0]), ("end of training", files[-1])):
            data = np.load(file)
            eigenvalues, projections = data["eigenvalues"], data["projections"]
            normalized = eigenvalues / eigenvalues.sum()
            entry[label] = {"step": int(data["step"]), "normalized_eigenvalues": normalized.tolist(),
                            "projections": projections.tolist(),
                            "P_from_spectrum": float((projections * normalized).sum())}
        summary[run.name] = entry
    return summary


def plot_spectrum(summary: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name, entry in summary.items():
        for label, style in (("initialization", ":"), ("end of training", "-")):
            lam = np.array(entry[label]["normalized_eigenvalues"])
            c = np.array(entry[label]["projections"])
            k = np.arange(1, len(lam) + 1)
            for ax, values in zip(axes, (lam, c, c * lam)):
                ax.plot(k, values, style, lw=1, label=f"{name}, {label} (step {entry[label]['step']})")
    for ax, title in zip(axes, ("λ_k / Σλ", "c_k", "c_k λ_k / Σλ")):
        ax.set(xscale="log", yscale="log", xlabel="k", title=title)
    axes[0].legend(fontsize=6)
    return _save(fig, path)


# --- Figure 8 --------------------------------------------------------------------------------------

def isocompute_summary(runs: list[RunData]) -> dict:
    budgets: dict[float, list[tuple[int, float, str]]] = defaultdict(list)
    for run in runs:
        flops = run.meta.get("sweep", {}).get("train.flops")
        final = _last(run.rows, "eval_loss")
        if flops is not None and final is not None and _phase(run) == "train":
            positions = window_means(run.rows, "spectral_position")[1]
            last_position = float(positions[-1]) if len(positions) else math.nan
            budgets[float(flops)].append((run.parameters, final, run.size, last_position, run.meta.get("steps")))
    return {flops: sorted(points) for flops, points in sorted(budgets.items())}


def plot_isocompute(summary: dict, path: Path) -> Path:
    """Final loss and last-window P against size, one curve per budget (paper Figure 8)."""
    fig, (ax_loss, ax_p) = plt.subplots(1, 2, figsize=(10, 4))
    for flops, points in summary.items():
        sizes = [p[0] for p in points]
        ax_loss.plot(sizes, [p[1] for p in points], marker="o", label=f"{flops:.2g} FLOPs")
        ax_p.plot(sizes, [p[3] for p in points], marker="o", label=f"{flops:.2g} FLOPs")
    ax_loss.set(xscale="log", xlabel="parameters", ylabel="final validation loss", title="fixed compute budgets")
    ax_p.set(xscale="log", yscale="log", xlabel="parameters", ylabel="P, last window")
    ax_loss.legend(fontsize=8)
    return _save(fig, path)


# --- Figure 6 --------------------------------------------------------------------------------------

def hutchinson_summary(runs: list[RunData]) -> dict:
    by_probes: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        probes = run.meta.get("sweep", {}).get("measure.probes")
        if probes is None or _phase(run) != "train":
            continue
        for row in run.rows:
            if _finite(row.get("chi_net_a_stderr")) and _finite(row.get("chi_net_a")):
                by_probes[int(probes)].append(row["chi_net_a_stderr"] / row["chi_net_a"])
    summary = {k: statistics.fmean(v) for k, v in sorted(by_probes.items()) if v}
    if len(summary) >= 2:
        ks = np.array(list(summary), dtype=float)
        slope, intercept = np.polyfit(np.log(ks), np.log(list(summary.values())), 1)
        summary = {"coefficient_of_variation": summary, "fit_slope": float(slope),
                   "fit_prefactor": float(np.exp(intercept))}
    return summary


def plot_hutchinson(summary: dict, path: Path) -> Path:
    cv = summary["coefficient_of_variation"]
    ks = np.array(list(cv), dtype=float)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(ks, list(cv.values()), "o", label="measured (per step, batch A)")
    ax.plot(ks, summary["fit_prefactor"] * ks ** summary["fit_slope"], "--",
            label=f"fit: K^{summary['fit_slope']:.2f}")
    ax.plot(ks, summary["fit_prefactor"] * ks ** -0.5, ":", color="gray", label="1/√K")
    ax.set(xscale="log", yscale="log", xlabel="probes K", ylabel="coefficient of variation of χ_net")
    ax.legend(fontsize=8)
    return _save(fig, path)


# --- Figure 9 --------------------------------------------------------------------------------------

def parameterization_summary(runs: list[RunData]) -> dict:
    found: dict[str, dict] = defaultdict(dict)
    for run in runs:
        if _phase(run) != "train":
            continue
        found[run.meta.get("parameterization", "standard")][run.size] = run
    if len(found) < 2:
        return {}
    return {kind: {size: {"parameters": run.parameters, "final_eval_loss": _last(run.rows, "eval_loss"),
                          "last_P": float(window_means(run.rows, "spectral_position")[1][-1])}
                   for size, run in sizes.items()} for kind, sizes in found.items()}


def plot_parameterizations(summary: dict, path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, sizes in summary.items():
        points = sorted(sizes.values(), key=lambda v: v["parameters"])
        axes[0].plot([p["parameters"] for p in points], [p["final_eval_loss"] for p in points], "o-", label=kind)
        axes[1].plot([p["parameters"] for p in points], [p["last_P"] for p in points], "o-", label=kind)
    axes[0].set(xscale="log", xlabel="parameters", ylabel="final validation loss")
    axes[1].set(xscale="log", yscale="log", xlabel="parameters", ylabel="P, last window")
    axes[1].legend()
    return _save(fig, path)


# --- all of it ---------------------------------------------------------------------------------------

def report(paths: list[Path], output: Path) -> list[Path]:
    runs = collect_runs(paths)
    directories = {}
    for path in map(Path, paths):
        for directory in ([path] if (path / "metrics.csv").exists() else run_directories(path)):
            directories[directory.name] = directory
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    summary: dict = {}
    trained = [r for r in runs if _phase(r) == "train"]
    if trained and any(_finite(row.get("spectral_position")) for r in trained for row in r.rows):
        figures += [plot_loss_and_position(trained, output / "loss_and_position.png"),
                    plot_components(trained, output / "components.png")]
        final = plot_final_loss(trained, output / "final_loss.png")
        figures += [final] if final else []
        summary["scaling"] = scaling_summary(trained)
        points = [(v["parameters"], v["final_eval_loss"]) for v in summary["scaling"].values()
                  if v["parameters"] and v["final_eval_loss"] and math.isfinite(v["final_eval_loss"])]
        if len(points) >= 2:
            a, b = power_law_fit(np.array([p[0] for p in points], float), np.array([p[1] for p in points]))
            summary["final_loss_power_law"] = {"prefactor": a, "exponent": b}
    test_loss = plot_test_loss(trained, output / "test_loss.png") if trained else None
    figures += [test_loss] if test_loss else []
    rfm = rfm_summary(runs)
    if rfm:
        figures.append(plot_rfm(rfm, output / "rfm_validation.png"))
        summary["rfm"] = {str(k): v for k, v in rfm.items()}
    probes = probe_summary(runs)
    if probes:
        figures += plot_probes(probes, output)
        summary["probes"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in probes.items()}
    spectra = spectrum_summary(runs, directories)
    if spectra:
        figures.append(plot_spectrum(spectra, output / "spectrum.png"))
        summary["spectrum"] = {name: {label: {"step": e["step"], "P_from_spectrum": e["P_from_spectrum"],
                                              "top_eigenvalue_share": e["normalized_eigenvalues"][0]}
                                      for label, e in entry.items()} for name, entry in spectra.items()}
    isocompute = isocompute_summary(runs)
    if isocompute:
        figures.append(plot_isocompute(isocompute, output / "isocompute.png"))
        summary["isocompute"] = {str(k): v for k, v in isocompute.items()}
    hutchinson = hutchinson_summary(runs)
    if "fit_slope" in hutchinson:
        figures.append(plot_hutchinson(hutchinson, output / "hutchinson_convergence.png"))
        summary["hutchinson"] = hutchinson
    parameterizations = parameterization_summary(runs)
    if parameterizations:
        figures.append(plot_parameterizations(parameterizations, output / "parameterizations.png"))
        summary["parameterizations"] = parameterizations
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return figures
