"""The command line, run as a user runs it."""

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "specreach.cli", *args], capture_output=True, text=True, timeout=300)


def test_demo_prints_the_components_at_log_spaced_steps():
    done = run("demo", "--steps", "8", "--measurements", "3", "--probes", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["step", "loss"])
    rows = [line.split() for line in lines[header + 1:] if line.split() and line.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == [0, 1, 3, 8]
    for row in rows:
        loss, l_mag, n_mag, position = map(float, row[1:5])
        assert loss > 0 and l_mag > 0 and n_mag > 0 and -1 <= position <= 1


def test_plugins_lists_builtins_with_their_source():
    done = run("plugins")
    assert done.returncode == 0, done.stderr
    for name in ("exact", "hutchinson", "entk"):
        assert any(line.split()[:3] == [name, "from", "specreach.lnp.builtin"] for line in done.stdout.splitlines())


def test_unknown_command_fails_with_usage():
    done = run("frobnicate")
    assert done.returncode != 0
    assert "invalid choice" in done.stderr
