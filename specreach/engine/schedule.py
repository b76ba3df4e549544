"""When to measure: logarithmically spaced windows of consecutive steps (plus step 0), or a list."""

from __future__ import annotations

import math

from specreach.spec import LogWindows


def measurement_steps(schedule: LogWindows | list[int], total_steps: int) -> dict[int, int]:
    """Map each measured step to its window index (window 0 is step 0)."""
    if isinstance(schedule, list):
        return {step: index for index, step in enumerate(sorted(set(schedule))) if 0 <= step < total_steps}
    steps = {0: 0}
    last_start = max(1, total_steps - schedule.steps_per_window)
    starts = sorted({round(10 ** (math.log10(last_start) * k / max(1, schedule.windows - 1)))
                     for k in range(schedule.windows)} - {0})
    for window, start in enumerate(starts, start=1):
        for step in range(start, min(start + schedule.steps_per_window, total_steps)):
            steps.setdefault(step, window)
    return steps
