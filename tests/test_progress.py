"""The progress display: ETAs that measured steps do not throw off, 'measuring' while a measurement
runs, plain lines with elapsed time and ETA off a terminal, and one line per run across a sweep."""

import io
import subprocess
import sys

import pytest

from engine_helpers import TINY_SPEC, write_spec
from specreach.engine import progress
from specreach.engine.progress import Progress, StepTimes, SweepProgress, duration


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    return clock


def test_a_slow_measured_step_does_not_make_the_eta_hours():
    """Step 0 is measured and takes 18 s; plain steps take 0.1 s; 2 more measured steps remain."""
    times = StepTimes(total=1000, start=0, measured={0, 500, 501})
    times.add(0, 18.0)
    times.add(1, 0.1)
    assert times.remaining(1) == pytest.approx(996 * 0.1 + 2 * 18.0)
    # An average over every step so far would have said (18.1 / 2) · 998 s, over two hours.
    assert (18.0 + 0.1) / 2 * 998 > 2 * 3600
    for step in range(2, 400):
        times.add(step, 0.2)
    assert times.remaining(399) == pytest.approx(598 * 0.2 + 2 * 18.0, rel=1e-3)


def test_before_the_first_measurement_measured_steps_count_as_plain_ones():
    times = StepTimes(total=10, start=0, measured={5})
    assert times.remaining(-1) is None  # nothing timed yet: unknown, not zero
    times.add(0, 1.0)
    assert times.remaining(0) == pytest.approx(9 * 1.0)
    times.add(5, 30.0)
    assert times.remaining(5) == pytest.approx(4 * 1.0)
    assert times.remaining(4) == pytest.approx(4 * 1.0 + 30.0)


def test_plain_lines_carry_elapsed_time_eta_and_measuring(clock):
    stream = io.StringIO()
    bar = Progress("small-seed0", total=20, start=0, bar=True, measured={0, 10}, stream=stream)  # not a TTY
    bar.measuring(0)
    clock.now += 18
    bar.update(0, 5.5, 0.25)
    for step in range(1, 20):
        if step == 10:
            bar.measuring(10)
            clock.now += 18
        else:
            clock.now += 0.5
        bar.update(step, 5.0, 0.25)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[small-seed0] step 1/20: measuring"
    # After a measured step 0 alone the time of a training step is unknown: no ETA rather than hours.
    assert lines[1] == "[small-seed0] step 1/20 loss 5.5 P 0.25 elapsed 0:18 ETA ?"
    assert lines[2] == "[small-seed0] step 3/20 loss 5 P 0.25 elapsed 0:19 ETA 0:26"  # 16 · 0.5 + 18
    assert "[small-seed0] step 11/20: measuring" in lines
    assert lines[-1] == "[small-seed0] step 20/20 loss 5 P 0.25 elapsed 0:45 ETA 0:00"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_bar_says_measuring_while_a_measurement_runs(clock):
    stream = Terminal()
    bar = Progress("small-seed0", total=4, start=0, measured={0}, stream=stream)
    bar.measuring(0)
    assert "measuring step 0" in stream.getvalue().splitlines()[-1] or "measuring step 0" in stream.getvalue()
    clock.now += 18
    bar.update(0, 5.5, 0.25)
    clock.now += 1
    bar.update(1, 5.4, None)
    bar.bar.refresh()
    assert "ETA 0:02, loss 5.4, P -" in stream.getvalue()
    bar.close()


def test_the_sweep_counts_runs_done_with_an_eta(clock):
    stream = io.StringIO()
    sweep = SweepProgress(total=4, done=1, stream=stream)  # one run was done before: no time spent on it here
    clock.now += 60
    sweep.run_done("a", "FINISHED")
    clock.now += 60
    sweep.run_done("b", "FAILED")
    assert stream.getvalue().splitlines() == [
        "[sweep] 2/4 runs done (a: FINISHED) elapsed 1:00 ETA 2:00",
        "[sweep] 3/4 runs done (b: FAILED) elapsed 2:00 ETA 1:00",
    ]
    assert SweepProgress(total=1, stream=stream).bar is None
    assert duration(3725) == "1:02:05" and duration(None) == "?"


def test_a_sweep_run_off_a_terminal_prints_both(tmp_path):
    spec = write_spec(tmp_path, TINY_SPEC, output=str(tmp_path / "out"),
                      train={**TINY_SPEC["train"], "steps": 6}, tracking={"enabled": False},
                      measure={**TINY_SPEC["measure"], "schedule": [0, 3]})
    done = subprocess.run([sys.executable, "-m", "specreach.cli", "run", str(spec)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert "[s-seed0] step 1/6: measuring" in lines
    assert any(line.startswith("[s-seed0] step 6/6 loss ") and " ETA 0:00" in line for line in lines)
    sweep = [line for line in lines if line.startswith("[sweep]")]
    assert [line.split(" elapsed")[0] for line in sweep] == ["[sweep] 1/2 runs done (s-seed0: FINISHED)",
                                                             "[sweep] 2/2 runs done (m-seed0: FINISHED)"]


def test_runs_elsewhere_print_above_the_sweep_with_an_eta_from_their_step_times(clock):
    """Two workers, four runs: the ETA is the runs' own time left, not the time since the start."""
    stream = io.StringIO()
    sweep = SweepProgress(total=4, stream=stream)
    clock.now += 600  # a slow start (imports, a busy machine) does not count as run time
    sweep.report({"run": "a", "line": "[a] step 1/10: measuring", "eta": None, "elapsed": 1.0})
    sweep.report({"run": "b", "line": None, "eta": 50.0, "elapsed": 10.0})
    sweep.report({"run": "a", "line": "[a] step 2/10 loss 1 P - elapsed 0:20 ETA 0:40", "eta": 40.0, "elapsed": 20.0})
    # time left: a 40 s, b 50 s, and two runs not started of the mean 60 s each, two at a time
    assert sweep.eta() == pytest.approx((40 + 50 + 2 * 60) / 2)
    sweep.report({"run": "a", "line": "[a] warning: something"})  # a warning keeps a's times
    sweep.run_done("a", "FINISHED")
    assert stream.getvalue().splitlines() == ["[a] step 1/10: measuring", "[a] step 2/10 loss 1 P - elapsed 0:20 ETA 0:40",
                                              "[a] warning: something",
                                              "[sweep] 1/4 runs done (a: FINISHED) elapsed 10:00 ETA 1:05"]
    # b has 50 s left; the two runs not started take the mean 40 s of a (20 s) and b (60 s): on two workers
