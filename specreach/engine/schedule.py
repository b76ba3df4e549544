"""When to measure: which training steps, and which window each belongs to.

Plots and summaries average the measured steps of a window; a window of one step is plotted as it
is. Three shapes of schedule (``specreach.spec``):

- ``LogWindows`` (paper, Appendix C.1): steps 0 … initial_steps − 1 each form their own window
  (the paper plots its first 40 steps un-averaged), then ``windows`` windows of
  ``steps_per_window`` consecutive steps, at logarithmically spaced starts from the end of the
  initial phase to the last step that still leaves room for a whole window. Early windows that
  the log-spacing would overlap are pushed later, so that no two windows share a step and no
  window is shorter than asked; a run too short to hold them all is refused.
- ``EveryWindows``: whole windows starting at steps 0, every, 2·every, …
- a list of steps, each its own window.
"""

from __future__ import annotations

import math

from specreach.spec import EveryWindows, LogWindows, check_measured_step_count

Schedule = LogWindows | EveryWindows | list[int]


def measurement_steps(schedule: Schedule, total_steps: int) -> dict[int, int]:
    """Map each measured step (0 ≤ step < total_steps) to its window index, in step order."""
    check_measured_step_count(schedule, total_steps)  # counted before a billion steps are listed
    if isinstance(schedule, list):
        outside = sorted(step for step in set(schedule) if not 0 <= step < total_steps)
        if outside:  # never dropped silently: a measurement asked for and not made is a wrong figure
            raise ValueError(f"measure.schedule: step {outside[0]} is not a step of this run (steps 0 … "
                             f"{total_steps - 1}); measure only steps the run trains")
        return {step: index for index, step in enumerate(sorted(set(schedule)))}
    if isinstance(schedule, EveryWindows):
        starts = range(0, total_steps - schedule.steps_per_window + 1, schedule.every)
        return _windows(starts, schedule.steps_per_window, first_index=0)
    steps = {step: step for step in range(schedule.initial_steps)}
    starts = log_window_starts(schedule.initial_steps, schedule.windows, schedule.steps_per_window, total_steps)
    steps.update(_windows(starts, schedule.steps_per_window, first_index=schedule.initial_steps))
    return steps


def log_window_starts(first: int, count: int, length: int, total_steps: int) -> list[int]:
    """Starts of ``count`` non-overlapping windows of ``length`` steps in [first, total_steps),
    log-spaced from ``first`` to ``total_steps − length`` where the spacing allows."""
    needed = first + count * length
    if needed > total_steps:
        raise ValueError(
            f"measure.schedule: {count} windows of {length} steps after {first} single step{'s' * (first != 1)} "
            f"need {needed} training steps; this run has {total_steps}. Use fewer or shorter windows, fewer "
            "initial_steps, a uniform schedule ({every: N}) or a list of steps."
        )
    if count == 0:
        return []
    last = total_steps - length
    low = max(first, 1)  # log-spacing needs a positive start
    if count == 1:
        ideal = [last]
    else:
        ratio = math.log(last / low) / (count - 1) if last > low else 0.0
        ideal = [round(low * math.exp(ratio * k)) for k in range(count)]
    starts = list(ideal)
    starts[0] = max(starts[0], first)
    for k in range(1, count):  # push overlapping windows later...
        starts[k] = max(starts[k], starts[k - 1] + length)
    starts[-1] = min(starts[-1], last)
    for k in range(count - 2, -1, -1):  # ...and pull back those pushed past the end
        starts[k] = min(starts[k], starts[k + 1] - length)
    return starts


def _windows(starts, length: int, first_index: int) -> dict[int, int]:
    return {start + offset: first_index + index for index, start in enumerate(starts) for offset in range(length)}
