"""`specreach report`: the paper's figures from recorded runs, with the numbers they show.

Most tests write run directories by hand (a metrics table and a run.json, as a run writes them)
so that each grouping rule is checked against numbers chosen to expose it; the others train tiny
runs end to end."""

import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from engine_helpers import write_spec
from specreach import Engine, load_spec, measure_lnp
from specreach.cli import main
from specreach.engine.metrics_table import MetricsTable, read_table
from specreach.paper import hutchinson
from specreach.paper.plots import MIN_FIT_SIZES, value_axis
from specreach.paper.probes import TOP_FRACTION
from specreach.paper.report import report

NO_TRACKING = "tracking={enabled: false}"


def fake_run(root, name, rows, spec="exp", size="s", seed=0, parameters=1000, parameterization="standard",
             sweep=None, phase="train", steps=None):
    directory = root / "runs" / name
    table = MetricsTable(directory / "metrics.csv")
    for row in rows:
        table.append(row)
    directory.joinpath("run.json").write_text(json.dumps({
        "name": name, "specreach.spec": spec, "size": size, "seed": seed, "parameters": parameters,
        "trainable_parameters": parameters, "parameterization": parameterization, "phase": phase,
        "sweep": sweep or {}, "steps": steps or (max(r["step"] for r in rows) + 1),
        "run_spec": {"measure": {"estimator": "hutchinson"}, "data": {"kind": "pydoc-text"}}}))
    return directory


def measured_rows(positions, final_loss, windows=None):
    """One measured step per window with the given P, a training loss per step, a final eval."""
    rows = [{"step": step, "loss": 2.0 / (step + 1), "window": (windows or range(len(positions)))[step],
             "spectral_position": p, "network_magnitude_normalized": 10.0 + step,
             "loss_magnitude_normalized": 1.0} for step, p in enumerate(positions)]
    return rows + [{"step": len(positions), "eval_loss": final_loss}]


def summary_of(tmp_path, root):
    report([root], tmp_path / "report")
    return json.loads((tmp_path / "report" / "summary.json").read_text())


def test_sweep_axes_are_never_averaged_and_every_seed_is_kept(tmp_path):
    root = tmp_path / "spec"
    finals = {("0.001", 0): 1.0, ("0.001", 1): 1.2, ("0.001", 2): 1.1, ("0.01", 0): 3.0, ("0.01", 1): 3.3,
              ("0.01", 2): 3.6}
    for (lr, seed), final in finals.items():
        fake_run(root, f"lr={lr}-s-seed{seed}", measured_rows([0.1, 0.05, 0.01], final), seed=seed,
                 sweep={"train.lr": float(lr)})
    scaling = summary_of(tmp_path, root)["scaling"]
    # two settings, not one
    assert set(scaling) == {"exp | standard | train.lr=0.001 | s", "exp | standard | train.lr=0.01 | s"}
    for lr in ("0.001", "0.01"):
        entry = scaling[f"exp | standard | train.lr={lr} | s"]["final_eval_loss"]
        values = [finals[(lr, seed)] for seed in range(3)]
        assert entry["seeds"] == 3 and entry["per_seed"] == {str(s): v for s, v in enumerate(values)}
        assert entry["mean"] == pytest.approx(np.mean(values)) and entry["std"] == pytest.approx(np.std(values, ddof=1))
        assert (entry["min"], entry["max"]) == (min(values), max(values))


def test_power_laws_are_fitted_per_parameterization_and_never_through_two_points(tmp_path):
    root = tmp_path / "spec"
    standard = {1000: 3.0, 4000: 2.4, 16000: 2.0}
    mup = {1000: 2.5, 4000: 1.5}  # two sizes: no power law
    for seed, offset in enumerate((-0.1, 0.1)):  # two seeds per size: the fit goes through their means
        for size_index, (parameters, final) in enumerate(standard.items()):
            fake_run(root, f"s{size_index}-seed{seed}", measured_rows([0.1, 0.01], final + offset),
                     size=f"s{size_index}", parameters=parameters, seed=seed)
        for size_index, (parameters, final) in enumerate(mup.items()):
            fake_run(root, f"m{size_index}-seed{seed}", measured_rows([0.1, 0.01], final + offset),
                     size=f"s{size_index}", parameters=parameters, parameterization="mup", seed=seed)
    summary = summary_of(tmp_path, root)
    assert list(summary["final_loss_power_law"]) == ["exp | standard"]
    slope, intercept = np.polyfit(np.log(list(standard)), np.log(list(standard.values())), 1)
    fit = summary["final_loss_power_law"]["exp | standard"]
    assert fit["exponent"] == pytest.approx(-slope) and fit["prefactor"] == pytest.approx(np.exp(intercept))
    assert MIN_FIT_SIZES == 3
    # Both parameterizations are drawn side by side, each size with its own seeds.
    assert set(summary["parameterizations"]) == {"exp | standard", "exp | mup"}
    assert (tmp_path / "report" / "final_loss.png").exists()


def test_parameterization_summary_keeps_every_seed(tmp_path):
    root = tmp_path / "spec"
    for kind in ("standard", "mup"):
        for seed, final in enumerate((1.0, 2.0, 4.0)):
            fake_run(root, f"{kind}-seed{seed}", measured_rows([0.1, 0.01 * (seed + 1)], final), seed=seed,
                     parameterization=kind)
    entry = summary_of(tmp_path, root)["parameterizations"]["exp | mup"][0]
    assert entry["final_eval_loss"]["per_seed"] == {"0": 1.0, "1": 2.0, "2": 4.0}
    assert entry["last_window_P"]["per_seed"] == pytest.approx({"0": 0.01, "1": 0.02, "2": 0.03})


def test_negative_positions_get_a_symmetric_log_axis():
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [3e-4, -2e-5, 1e-2])
    value_axis(ax, [3e-4, -2e-5, 1e-2])
    assert ax.get_yscale() == "symlog" and ax.yaxis.get_transform().linthresh == 1e-5
    value_axis(ax, [3e-4, 1e-2])
    assert ax.get_yscale() == "log"
    plt.close(fig)


def test_negative_window_means_are_drawn(tmp_path):
    root = tmp_path / "spec"
    fake_run(root, "s-seed0", measured_rows([0.1, -0.02, 0.003, 0.001], 1.0))
    summary = summary_of(tmp_path, root)
    assert summary["scaling"]["exp | standard | s"]["first_window_P"]["mean"] == 0.1
    assert (tmp_path / "report" / "loss_and_position.png").exists()


def test_initial_single_steps_stay_unaveraged(tmp_path):
    root = tmp_path / "spec"
    positions = [0.5, 0.4, 0.3, 0.2, 0.1, 0.1]
    fake_run(root, "s-seed0", measured_rows(positions, 1.0, windows=[0, 1, 2, 3, 3, 3]))
    scaling = summary_of(tmp_path, root)["scaling"]["exp | standard | s"]
    assert scaling["first_window_P"]["mean"] == 0.5
    assert scaling["last_window_P"]["mean"] == pytest.approx((0.2 + 0.1 + 0.1) / 3)  # the window of three


def test_one_step_runs_draw_no_empty_dynamics(tmp_path):
    root = tmp_path / "spec"
    for seed in range(2):
        fake_run(root, f"s-seed{seed}", measured_rows([0.1], 1.0), seed=seed)
    paths = report([root], tmp_path / "report")
    assert not any(p.name in ("loss_and_position.png", "components.png") for p in paths)
    assert not (tmp_path / "report" / "loss_and_position.png").exists()


def test_probe_ratio_over_seeds(tmp_path):
    """Per window the top 10 % of P; the ratio of the seed means, and each seed's own ratio."""
    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", NO_TRACKING, "train.seeds=[0, 1]",
                                            "model.sizes={s: {hidden: 8, ff: 16}}", "probe={steps: 12}"])
    Engine(spec).run()
    assert main(["report", str(tmp_path / "out" / "tiny"), "--output", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    runs = tmp_path / "out" / "tiny" / "runs"

    def top(name):
        windows = {}
        for r in read_table(runs / name / "metrics.csv"):
            if math.isfinite(r.get("spectral_position", math.nan)):
                windows.setdefault(r["window"], []).append(r["spectral_position"])
        return np.array([np.mean(sorted(v, reverse=True)[:max(1, math.ceil(TOP_FRACTION * len(v)))])
                         for _, v in sorted(windows.items())])

    trained = [top(f"s-seed{s}-probe-trained") for s in (0, 1)]
    random_ = [top(f"s-seed{s}-probe-random") for s in (0, 1)]
    probe = summary["probes"]["tiny | standard | s"]
    assert probe["P_ratio_trained_over_random"] == pytest.approx(list(np.mean(trained, 0) / np.mean(random_, 0)))
    for seed in (0, 1):
        assert probe["P_ratio_per_seed"][str(seed)] == pytest.approx(list(trained[seed] / random_[seed]))
    for figure in ("probe_ratio", "network_magnitude_probes", "loss_and_position", "components"):
        assert (tmp_path / "report" / f"{figure}.png").exists()


@pytest.mark.slow  # about 10 s: keeps the default suite under 5 minutes on 2 cores
def test_hutchinson_convergence_from_repeated_draws_on_the_trained_model(tmp_path, monkeypatch):
    """Plain Hutchinson (probes through the head) on the final model: the coefficient of variation
    of independent draws falls like K^−½, and the estimator's own standard error agrees with it."""
    monkeypatch.setattr(hutchinson, "PROBES", (1, 2, 4, 8, 16))
    monkeypatch.setattr(hutchinson, "DRAWS", 48)
    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", NO_TRACKING,
                                            "model.sizes={s: {hidden: 8, ff: 16}}", "train.seeds=[0, 1]",
                                            "measure.options={readout: probed}"])
    Engine(spec).run()
    report([tmp_path / "out" / "tiny"], tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["hutchinson"]
    convergence = summary["convergence"]["tiny"]
    assert convergence["run"] == "s-seed0" and convergence["options"] == {"readout": "probed"}
    assert -0.65 < convergence["fit_exponent"] < -0.35
    for k, entry in convergence["by_probes"].items():
        # With many probes the reported s.e. matches the spread of independent draws (with few, the
        # estimator widens it by t_ν/z on purpose, for coverage).
        if int(k) >= 8:
            assert 0.6 < entry["reported_relative_stderr"] / entry["cv"] < 1.6, k
        assert len(entry["chi_net_draws"]) == 48 and np.mean(entry["chi_net_draws"]) == pytest.approx(
            entry["mean_chi_net"])  # the top-left panel draws these
    # The draws are of the trained model on a fixed batch: their mean is χ_net of that batch.
    from specreach.paper.checkpoints import first_training_batch, trained
    from specreach.paper.runs import load_run

    checkpoint = trained(load_run(tmp_path / "out" / "tiny" / "runs" / "s-seed0"))
    batch = first_training_batch(checkpoint, 4)
    exact = measure_lnp(checkpoint.model, checkpoint.loss_fn, batch, estimator="exact").chi_net_a
    draws_mean = convergence["by_probes"]["16"]["mean_chi_net"]
    assert draws_mean == pytest.approx(exact, rel=4 * convergence["by_probes"]["16"]["cv"] / 48 ** 0.5)
    assert set(summary["seed_agreement"]["tiny"]) == {"tiny | standard | s"}
    assert (tmp_path / "report" / "hutchinson_convergence.png").exists()


def test_figure_6_has_two_top_panels_the_draws_and_their_coefficient_of_variation(tmp_path, monkeypatch):
    """Top left: each draw against K around the mean of all draws; top right: the CV and its fit."""
    from specreach.paper import plots

    rng = np.random.default_rng(0)
    by_probes = {}
    for k in (1, 2, 4, 8):
        values = 10.0 * (1 + rng.standard_normal(16) * 0.1 / k ** 0.5)
        by_probes[str(k)] = {"cv": float(values.std(ddof=1) / values.mean()), "cv_stderr": 0.01,
                             "mean_chi_net": float(values.mean()), "reported_relative_stderr": None,
                             "chi_net_draws": values.tolist()}
    entry = {"run": "r", "batch_samples": 4, "draws": 16, "by_probes": by_probes,
             "fit_exponent": -0.5, "fit_prefactor": 0.1}
    figures = []
    monkeypatch.setattr(hutchinson, "save", lambda fig, path: figures.append(fig) or path)
    hutchinson.plot_hutchinson({"convergence": {"spec": entry}, "seed_agreement": {}}, tmp_path / "f.png")
    left, right = figures[0].axes
    assert left.get_ylabel().startswith("χ_net estimate") and right.get_ylabel().startswith("coefficient of variation")
    drawn = np.concatenate([line.get_ydata() for line in left.lines if line.get_marker() == "."])
    assert len(drawn) == 4 * 16  # every draw
    pooled = sum(int(k) * v["mean_chi_net"] for k, v in by_probes.items()) / 15
    assert hutchinson.pooled_mean(entry) == pytest.approx(pooled)
    assert np.allclose(sorted(drawn), sorted(np.concatenate([v["chi_net_draws"] for v in by_probes.values()]) / pooled))
    plots.plt.close("all")


def test_spectrum_figure_matches_the_measured_position(tmp_path):
    spec = {
        "name": "spectrum",
        "model": {"kind": "vit", "params": {"image_size": 8, "channels": 1, "patch": 4, "hidden": 8, "mlp": 16,
                                             "heads": 2, "layers": 1, "classes": 10}},
        "data": {"kind": "digits", "params": {"validation_size": 97}},
        "train": {"lr": 1.0e-2, "batch_size": 6, "steps": 8},
        "measure": {"estimator": "entk", "schedule": [0, 7], "cross_batch": False},
        "tracking": {"enabled": False},
    }
    Engine(load_spec(write_spec(tmp_path, spec), [f"output={tmp_path / 'out'}"])).run()
    assert main(["report", str(tmp_path / "out" / "spectrum"), "--output", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["spectrum"]["default-seed0"]
    rows = read_table(tmp_path / "out" / "spectrum" / "runs" / "default-seed0" / "metrics.csv")
    measured = {r["step"]: r["spectral_position"] for r in rows if math.isfinite(r.get("spectral_position", math.nan))}
    assert summary["initialization"]["step"] == 0 and summary["end of training"]["step"] == 7
    for label, step in (("initialization", 0), ("end of training", 7)):
        assert summary[label]["P_from_spectrum"] == pytest.approx(measured[step], rel=1e-6)  # P = Σ c_k λ̃_k
    assert (tmp_path / "report" / "spectrum.png").exists()


def test_fixed_sample_spectrum_restricted_to_positions_and_vocabulary(tmp_path):
    """Figure 12: one fixed sample (the pool's first), a few positions × vocabulary indices, at
    initialization and after training — the same inputs at both steps."""
    positions, indices = [0, 3, 7], [32, 101, 115, 116]
    spec = {
        "name": "fixed",
        "model": {"kind": "llama", "params": {"vocab": 256, "layers": 1, "heads": 2, "context": 8, "hidden": 8,
                                               "ff": 16}},
        "data": {"kind": "pydoc-text", "params": {"context": 8, "validation_size": 4}},
        "train": {"lr": 1.0e-2, "batch_size": 4, "steps": 6},
        "measure": {"estimator": "entk", "options": {"positions": positions, "output_indices": indices},
                    "schedule": [0, 5], "cross_batch": False, "fixed_batch": True, "batch_size": 1},
        "tracking": {"enabled": False},
    }
    Engine(load_spec(write_spec(tmp_path, spec), [f"output={tmp_path / 'out'}"])).run()
    report([tmp_path / "out" / "fixed"], tmp_path / "report")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["spectrum"]["default-seed0"]
    spectra = sorted((tmp_path / "out" / "fixed" / "runs" / "default-seed0" / "spectra").glob("*.npz"))
    assert [int(np.load(f)["step"]) for f in spectra] == [0, 5]
    assert all(len(np.load(f)["eigenvalues"]) == len(positions) * len(indices) for f in spectra)
    # Step 0 measured the initial model on the pool's first sample: recompute it independently.
    from specreach.data.text import PydocText
    from specreach.engine.tasks import token_cross_entropy
    from specreach.models.parameterization import ModelRecipe, build_model

    model = build_model(ModelRecipe(kind="llama", params=spec["model"]["params"], seed=0))
    inputs, targets = PydocText(context=8, validation_size=4).validation_pool()
    expected = measure_lnp(model, token_cross_entropy, (inputs[:1], targets[:1]), estimator="entk",
                           positions=positions, output_indices=indices)
    assert summary["initialization"]["P_from_spectrum"] == pytest.approx(expected.spectral_position, rel=1e-6)
    assert np.allclose(np.load(spectra[0])["eigenvalues"], expected.eigenvalues, rtol=1e-6)


def test_rfm_figure(tmp_path):
    spec = {
        "name": "rfm",
        "model": {"kind": "random-features", "params": {"inputs": 32, "features": 128}},
        "data": {"kind": "powerlaw-teacher", "params": {"inputs": 32, "features": 128, "train_size": 48,
                                                        "validation_size": 1}},
        "sweep": {"data.params.alpha": [1.5, 3.0]},
        "train": {"steps": 1, "batch_size": 48, "seeds": 3,
                  "seed_params": {"model.params.feature_seed": 0, "data.params.feature_seed": 0,
                                  "data.params.teacher_seed": 1000, "data.params.sample_seed": 2000}},
        "measure": {"estimator": "exact", "schedule": [0], "cross_batch": False},
        "tracking": {"enabled": False},
    }
    Engine(load_spec(write_spec(tmp_path, spec), [f"output={tmp_path / 'out'}"])).run()
    assert main(["report", str(tmp_path / "out" / "rfm"), "--output", str(tmp_path / "report")]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())["rfm"]
    (setting,) = summary.values()
    assert set(setting) == {"1.5", "3"}
    for alpha, entry in setting.items():
        assert entry["seeds"] == 3
        assert entry["L_normalized"][0] == pytest.approx(4.0, rel=1e-5)  # 4 Var(y) at f = 0
        assert 0 < entry["P"][0] < 1 and 0 < entry["P_theory_arccos"][0] < 1
        spectrum = np.arange(1, 33, dtype=float) ** -float(alpha)
        assert entry["P_relation_finite_D"] == pytest.approx(0.25 * (spectrum ** 2).sum() / spectrum.sum() ** 2)
        assert entry["P_relation_finite_D"] > entry["P_asymptote_infinite_D"]  # the partial sums at D = 32
    assert (tmp_path / "report" / "rfm_validation.png").exists()
    assert not (tmp_path / "report" / "loss_and_position.png").exists()  # one step: no dynamics to draw


def test_report_on_a_missing_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no run directory at" in capsys.readouterr().err


def test_short_log_axes_get_enough_labels(tmp_path):
    """An axis spanning about a decade is labelled at 1-2-5 steps, not only at one power of ten."""
    from specreach.paper.plots import save

    fig, ax = plt.subplots()
    ax.plot([1, 64], [0.0065, 0.07])
    ax.set(xscale="log", yscale="log")
    save(fig, tmp_path / "axis.png")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.yaxis.get_ticklabels() if t.get_text() and
              ax.get_ylim()[0] <= t.get_position()[1] <= ax.get_ylim()[1]]
    assert len(labels) >= 3, labels


def test_no_power_law_through_single_seeds_and_the_figure_says_why(tmp_path):
    from specreach.paper.plots import MIN_FIT_SEEDS, final_loss_note, final_loss_series, fit_series
    from specreach.paper.runs import load_run

    root = tmp_path / "spec"
    for size_index, (parameters, final) in enumerate({1000: 3.0, 4000: 3.2, 16000: 2.0}.items()):
        fake_run(root, f"s{size_index}", measured_rows([0.1, 0.01], final), size=f"s{size_index}",
                 parameters=parameters, spec="quick")
    series = final_loss_series([load_run(path) for path in sorted((root / "runs").iterdir())])
    assert fit_series(series) == {} and MIN_FIT_SEEDS == 2
    assert final_loss_note(series, {}) == ("mean over 1 seed. No power law fitted (3 sizes with 1 seed): a fit needs "
                                           "≥ 3 sizes with ≥ 2 seeds each")
    assert "final_loss_power_law" not in summary_of(tmp_path, root)


def test_tick_labels_of_a_narrow_log_axis_are_distinct():
    import matplotlib.pyplot as plt

    from specreach.paper.plots import tidy

    fig, ax = plt.subplots()
    ax.plot([1000, 4000, 16000], [5.531, 5.534, 5.537])
    ax.set(xscale="log", yscale="log")
    tidy(ax)
    fig.canvas.draw()
    labels = [label.get_text() for label in ax.get_yticklabels() if label.get_text()]
    plt.close(fig)
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
