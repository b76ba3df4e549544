"""The measurement schedule (paper, Appendix C.1): single early steps, then log-spaced windows of the
stated length that never overlap and are never cut short."""

import math

import pytest

from specreach.engine.schedule import log_window_starts, measurement_steps
from specreach.spec import EveryWindows, LogWindows, MeasureSection


def windows_of(steps: dict[int, int]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for step, window in sorted(steps.items()):
        found.setdefault(window, []).append(step)
    return found


# The paper's step counts: SimpleStories (66116) and CIFAR-5M next-pixel (42207); the specs' 20 windows × 50 steps
# after the first 40 steps; and shapes where the log-spacing crowds the early windows.
@pytest.mark.parametrize("total, initial, count, length", [
    (66116, 40, 20, 50), (42207, 40, 20, 50), (66116, 1, 20, 50), (42207, 0, 20, 50),
    (300, 10, 8, 20), (1040, 40, 20, 50), (100, 1, 4, 2),
])
def test_log_windows_are_whole_disjoint_and_ordered(total, initial, count, length):
    steps = measurement_steps(LogWindows(initial_steps=initial, windows=count, steps_per_window=length), total)
    windows = windows_of(steps)
    assert len(windows) == initial + count
    assert all(0 <= step < total for step in steps)
    for index in range(initial):  # the initial phase: one step per window, every step
        assert windows[index] == [index]
    spans = [windows[initial + k] for k in range(count)]
    for k, span in enumerate(spans):
        assert len(span) == length, (k, span)  # no window shorter than requested
        assert span == list(range(span[0], span[0] + length))  # consecutive steps
        if k:
            assert span[0] >= spans[k - 1][-1] + 1  # none overlaps the one before
    if count:
        assert spans[0][0] >= initial  # after the initial phase
        assert spans[-1][-1] == total - 1  # the last window ends with training


def test_log_windows_are_log_spaced_where_the_windows_do_not_crowd():
    total, initial, count, length = 66116, 40, 20, 50
    starts = log_window_starts(initial, count, length, total)
    ratio = (total - length) / initial
    ideal = [initial * ratio ** (k / (count - 1)) for k in range(count)]
    # Early windows are pushed to start right after each other; from where the spacing exceeds the
    # window length on, every start is the log-spaced one (up to rounding).
    assert starts[0] == initial
    crowded = [k for k in range(count) if starts[k] != round(ideal[k])]
    assert crowded == list(range(1, len(crowded) + 1))  # only a leading run of windows is moved
    for k in crowded:
        assert starts[k] == starts[k - 1] + length
    free = [k for k in range(1, count) if k not in crowded]
    assert len(free) >= count // 2
    logs = [math.log(starts[k]) for k in free]
    steps = {round(b - a, 6) for a, b in zip(logs, logs[1:])}
    assert max(steps) - min(steps) < 1e-3 + 2 / starts[free[0]]  # equal steps in log(step), rounding aside


def test_the_paper_schedule_measures_what_it_says():
    steps = measurement_steps(LogWindows(initial_steps=40, windows=20, steps_per_window=50), 66116)
    assert len(steps) == 40 + 20 * 50
    assert set(range(40)) <= set(steps)


def test_a_run_too_short_for_the_windows_is_refused():
    with pytest.raises(ValueError, match=r"measure.schedule: 20 windows of 50 steps after 40 single steps need "
                                         r"1040 training steps; this run has 1039"):
        measurement_steps(LogWindows(initial_steps=40, windows=20, steps_per_window=50), 1039)


def test_default_schedule_is_step_zero_and_eight_single_steps():
    steps = measurement_steps(LogWindows(), 1000)
    assert steps[0] == 0 and len(steps) == 9 and max(steps) == 999
    assert sorted(steps) == sorted(set(steps))


def test_uniform_windows():
    steps = measurement_steps(EveryWindows(every=10, steps_per_window=3), 35)
    assert windows_of(steps) == {0: [0, 1, 2], 1: [10, 11, 12], 2: [20, 21, 22], 3: [30, 31, 32]}
    # A window that would run past the end is left out, not cut short.
    assert max(measurement_steps(EveryWindows(every=10, steps_per_window=3), 32)) == 22
    assert measurement_steps(EveryWindows(every=1), 4) == {0: 0, 1: 1, 2: 2, 3: 3}
    with pytest.raises(ValueError, match="must not exceed every"):
        EveryWindows(every=2, steps_per_window=3)


def test_the_spec_accepts_each_shape():
    assert isinstance(MeasureSection(schedule={"every": 5}).schedule, EveryWindows)
    log = MeasureSection(schedule={"initial_steps": 40, "windows": 20, "steps_per_window": 50}).schedule
    assert isinstance(log, LogWindows) and log.initial_steps == 40
    assert MeasureSection(schedule=[0, 5]).schedule == [0, 5]
    with pytest.raises(ValueError):
        MeasureSection(schedule={"every": 5, "windows": 3})


def test_list_schedule_is_sorted_and_refuses_steps_outside_the_run():
    assert measurement_steps([9, 0, 4, 4], 10) == {0: 0, 4: 1, 9: 2}
    with pytest.raises(ValueError, match="step 12 is not a step of this run \\(steps 0 … 9\\)"):
        measurement_steps([9, 0, 4, 12], 10)
