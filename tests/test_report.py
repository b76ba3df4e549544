"""`specreach report`: the paper's figures from recorded runs, with the numbers they show."""

import json
import math

import numpy as np
import pytest

from engine_helpers import write_spec
from specreach import Engine, load_spec
from specreach.cli import main
from specreach.engine.metrics_table import read_table
from specreach.paper.report import TOP_FRACTION

NO_TRACKING = "tracking={enabled: false}"


def test_probe_and_hutchinson_figures(tmp_path, capsys):
    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", NO_TRACKING,
                                            "model.sizes={s: {hidden: 8, ff: 16}}", "probe={steps: 12}",
                                            "sweep={measure.probes: [2, 8]}"])
    Engine(spec).run()
    assert main(["report", str(tmp_path / "out" / "tiny"), "--output", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    for figure in ("loss_and_position", "components", "probe_ratio", "network_magnitude_probes",
                   "hutchinson_convergence"):
        assert (tmp_path / "report" / f"{figure}.png").exists() and figure in printed
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())

    # Hutchinson: the coefficient of variation is the reported relative standard error, averaged.
    runs = tmp_path / "out" / "tiny" / "runs"
    for probes in (2, 8):
        rows = read_table(runs / f"probes={probes}-s-seed0" / "metrics.csv")
        cv = np.mean([r["chi_net_a_stderr"] / r["chi_net_a"] for r in rows if math.isfinite(r.get("chi_net_a_stderr", math.nan))])
        assert summary["hutchinson"]["coefficient_of_variation"][str(probes)] == pytest.approx(cv)
    assert summary["hutchinson"]["fit_slope"] < 0  # more probes, less variation

    # Probes: per window the top 10 % of P (here: the largest of its two steps), trained over random.
    probe = summary["probes"]["s"]
    def top(name):
        rows = read_table(runs / name / "metrics.csv")
        windows = {}
        for r in rows:
            if math.isfinite(r.get("spectral_position", math.nan)):
                windows.setdefault(r["window"], []).append(r["spectral_position"])
        return [np.mean(sorted(v, reverse=True)[:max(1, math.ceil(TOP_FRACTION * len(v)))]) for _, v in sorted(windows.items())]
    trained, random_ = top("probes=2-s-seed0-probe-trained"), top("probes=2-s-seed0-probe-random")
    trained8, random8 = top("probes=8-s-seed0-probe-trained"), top("probes=8-s-seed0-probe-random")
    ratios = [np.mean([a, c]) / np.mean([b, d]) for a, b, c, d in zip(trained, random_, trained8, random8)]
    assert probe["P_ratio_trained_over_random"] == pytest.approx(ratios)  # mean over runs, then the ratio


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
    assert set(summary) == {"1.5", "3.0"}
    for alpha in summary.values():
        assert alpha["seeds"] == 3
        assert alpha["L_normalized"][0] == pytest.approx(4.0, rel=1e-5)  # 4 Var(y) at f = 0
        assert 0 < alpha["P"][0] < 1 and 0 < alpha["P_theory_arccos"][0] < 1
    assert (tmp_path / "report" / "rfm_validation.png").exists()


def test_report_on_a_missing_directory(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no run directory at" in capsys.readouterr().err
