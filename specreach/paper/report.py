"""``specreach report``: the paper's figures drawn from recorded runs (their metrics tables,
``run.json``, spectra and, for Figure 6, the trained model), so it works without MLflow and long
after the runs.

Every figure is drawn when the runs hold what it needs:

| figure | paper | needs |
|---|---|---|
| loss_and_position, components | 1, 10–11 | trained runs with at least two measurement windows |
| final_loss | 1, 7 | final evaluations of at least two sizes (a power law from three) |
| test_loss | 7 | evaluations during training (``train.eval_every``) |
| loss_change | 2 | cross-batch measurements with the loss on B after the update |
| rfm_validation | 3 | runs on ``powerlaw-teacher`` measured at step 0 |
| probe_ratio, network_magnitude_probes | 4, 5 | linear-probe runs (``probe`` section) |
| hutchinson_convergence | 6 | trained runs measured with plain Hutchinson (draws on their final model), and seeds |
| isocompute | 8 | a sweep over ``train.flops`` |
| parameterizations | 9 | standard and muP runs side by side |
| spectrum | 12 | spectra saved by the ``entk`` estimator at two or more steps |

Runs are grouped by spec, parameterization, every swept value, size and phase; only seeds are
pooled, and every figure that pools them shows their spread. ``summary.json`` beside the
figures holds the numbers they show, with every seed's value.
"""

from __future__ import annotations

import json
from pathlib import Path

from specreach.paper import hutchinson, isocompute, parameterizations, probes, rfm, spectrum
from specreach.paper.plots import (
    final_loss_series, fit_series, plot_components, plot_final_loss, plot_loss_and_position, plot_loss_change,
    plot_test_loss,
)
from specreach.paper.runs import RunData, collect_runs, groups, key_text, seed_curves, seed_summary

TOP_FRACTION = probes.TOP_FRACTION


def scaling_summary(runs: list[RunData]) -> dict:
    """Per setting: parameters, seeds, final losses and the first and last window's P and Ñ."""
    summary = {}
    for key, group in groups(runs).items():
        seeds = [run.seed for run in group]
        entry = {"size": key.size, "parameters": group[0].parameters, "seeds": seeds,
                 "final_eval_loss": seed_summary([run.last("eval_loss") for run in group], seeds),
                 "final_train_loss": seed_summary([run.last("loss") for run in group], seeds)}
        for metric, name in (("spectral_position", "P"), ("network_magnitude_normalized", "N_normalized")):
            curves = seed_curves(group, metric)
            if len(curves):
                entry[f"first_window_{name}"] = curves.summary(0)
                entry[f"last_window_{name}"] = curves.summary(len(curves) - 1)
        summary[key_text(key)] = entry
    return summary


def report(paths: list[Path], output: Path) -> list[Path]:
    runs = collect_runs(paths)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    figures: list[Path | None] = []
    summary: dict = {}

    trained = [run for run in runs if run.phase == "train"]
    figures += [plot_loss_and_position(trained, output / "loss_and_position.png"),
                plot_components(trained, output / "components.png"),
                plot_final_loss(trained, output / "final_loss.png"),
                plot_test_loss(trained, output / "test_loss.png"),
                plot_loss_change(trained, output / "loss_change.png")]
    if trained:
        summary["scaling"] = scaling_summary(trained)
        fits = fit_series(final_loss_series(trained))
        if fits:
            summary["final_loss_power_law"] = {key_text(k) or "all": {"prefactor": a, "exponent": b}
                                               for k, (a, b) in fits.items()}

    found = rfm.rfm_summary(runs)
    if found:
        figures.append(rfm.plot_rfm(found, output / "rfm_validation.png"))
        summary["rfm"] = {setting: {f"{alpha:g}": entry for alpha, entry in by_alpha.items()}
                          for setting, by_alpha in found.items()}

    found = probes.probe_summary(runs)
    if found:
        figures += probes.plot_probes(found, output)
        summary["probes"] = probes.summary_json(found)

    found = hutchinson.hutchinson_summary(runs)
    if found["convergence"] or found["seed_agreement"]:
        figures.append(hutchinson.plot_hutchinson(found, output / "hutchinson_convergence.png"))
        summary["hutchinson"] = hutchinson.summary_json(found)

    found = isocompute.isocompute_summary(runs)
    if found:
        figures.append(isocompute.plot_isocompute(found, output / "isocompute.png"))
        summary["isocompute"] = isocompute.summary_json(found)

    found = parameterizations.parameterization_summary(runs)
    if found:
        figures.append(parameterizations.plot_parameterizations(found, output / "parameterizations.png"))
        summary["parameterizations"] = parameterizations.summary_json(found)

    found = spectrum.spectrum_summary(runs)
    if found:
        figures.append(spectrum.plot_spectrum(found, output / "spectrum.png"))
        summary["spectrum"] = spectrum.summary_json(found)

    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return [figure for figure in figures if figure is not None]
