"""The command line, run as a user runs it."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "specreach.cli", *args], capture_output=True, text=True, timeout=300)


def test_plugins_lists_builtins_with_their_source():
    done = run("plugins")
    assert done.returncode == 0, done.stderr
    lines = [line.split()[:3] for line in done.stdout.splitlines()]
    for name in ("exact", "hutchinson", "entk", "pydoc-text", "powerlaw-teacher", "cifar5m", "simplestories",
                 "digits", "text-file", "llama", "vit", "random-features", "local", "processes", "ray"):
        assert [name, "from", "specreach.builtins"] in lines


def test_unknown_command_fails_with_usage():
    done = run("frobnicate")
    assert done.returncode != 0
    assert "invalid choice" in done.stderr


def test_ui_needs_a_run_directory(tmp_path):
    done = run("ui", str(tmp_path))
    assert done.returncode == 2
    assert f"no MLflow store at {tmp_path / 'mlflow.db'}" in done.stderr
