"""The measurement's self-check inside the engine (``measure.verify``) and ``specreach check-model``."""

import subprocess
import sys

import pytest

from engine_helpers import write_spec
from specreach.cli import main
from specreach.config import load_spec
from specreach.engine import Engine
from specreach.lnp.per_sample_norms import PerSampleNormTape


@pytest.fixture
def gap_in_the_fast_path(monkeypatch):
    """A fast path that silently drops the embedding, as a future bug might."""
    original = PerSampleNormTape.squared_norms

    def dropping(self, outputs, vectors, skip=None):
        norms = original(self, outputs, vectors, skip)
        norms.pop("embedding.weight", None)
        return norms

    monkeypatch.setattr(PerSampleNormTape, "squared_norms", dropping)


def test_check_model_command_passes_on_the_built_in_models(tmp_path):
    """Two sizes × two learning rates × two seeds are two models: each is checked once."""
    spec = write_spec(tmp_path)
    completed = subprocess.run([sys.executable, "-m", "specreach.cli", "check-model", str(spec), "--paths",
                                "sweep={train.lr: [0.001, 0.003]}", "train.seeds=[0,1]"],
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    verdicts = [line for line in completed.stdout.splitlines() if line.endswith((": ok", ": MISMATCH"))]
    assert verdicts == ["lr=0.001-s-seed0: ok", "lr=0.001-m-seed0: ok"], completed.stdout
    assert "embedding.weight: Embedding layer rule of 'embedding'" in completed.stdout


def test_check_model_command_reports_a_gap(tmp_path, capsys, gap_in_the_fast_path):
    assert main(["check-model", str(write_spec(tmp_path))]) == 1
    out, err = capsys.readouterr()
    assert "s-seed0: MISMATCH" in out and "disagree with plain autograd" in err


def test_a_run_checks_its_first_measurement_and_fails_on_a_gap(tmp_path, gap_in_the_fast_path):
    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", "model.sizes={s: {hidden: 8, ff: 16}}"])
    (result,) = Engine(spec, tracking_uri=None).run()
    assert result.status == "FAILED"
    assert "disagree with plain autograd" in result.message and "embedding" in result.message


def test_verify_off_skips_the_check(tmp_path, gap_in_the_fast_path):
    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", "measure.verify=false",
                                            "model.sizes={s: {hidden: 8, ff: 16}}"])
    (result,) = Engine(spec, tracking_uri=None).run()
    assert result.status == "FINISHED"
