"""What a person watching a sweep sees: one bar across the sweep (runs done of all, with an ETA) and
one per run (steps, loss, P, ETA), or plain lines with elapsed time and ETA when stderr is not a
terminal (a log file, a batch job) or when runs share one (worker processes).

A run's ETA keeps training steps and measured steps apart: a measurement can cost a hundred
training steps, and an average over both would promise hours after a measured step 0 and minutes
after a long stretch of plain steps. Remaining time = remaining plain steps × their recent time +
remaining measured steps × the time measured steps took so far. While a measurement runs the bar
says so.
"""

from __future__ import annotations

import sys
import time
from typing import Collection, TextIO

#: Weight of the newest plain step in the running average of the step time.
SMOOTHING = 0.1


def duration(seconds: float | None) -> str:
    """``1:02:03``, ``2:03``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class StepTimes:
    """Times of plain and measured steps, and the time the remaining ones will take."""

    def __init__(self, total: int, start: int, measured: Collection[int] = ()):
        self.total, self.measured = total, frozenset(measured)
        self.plain_seconds: float | None = None  # running average of a plain step
        self.measured_seconds: list[float] = []

    def add(self, step: int, seconds: float) -> None:
        if step in self.measured:
            self.measured_seconds.append(seconds)
        elif self.plain_seconds is None:
            self.plain_seconds = seconds
        else:
            self.plain_seconds += SMOOTHING * (seconds - self.plain_seconds)

    def remaining(self, step: int) -> float | None:
        """Seconds for the steps after ``step``; None until a plain step was timed."""
        later = range(step + 1, self.total)
        measured_left = sum(1 for s in later if s in self.measured)
        plain_left = len(later) - measured_left
        measured_each = (sum(self.measured_seconds) / len(self.measured_seconds) if self.measured_seconds
                         else self.plain_seconds)  # before the first measurement: as a plain step
        if (plain_left and self.plain_seconds is None) or (measured_left and measured_each is None):
            return None
        return plain_left * (self.plain_seconds or 0.0) + measured_left * (measured_each or 0.0)


class Progress:
    """One run's progress: a tqdm bar on a terminal, plain lines otherwise (and always when runs share a
    terminal, ``bar=False``): every tenth of the run, with elapsed time and ETA."""

    def __init__(self, name: str, total: int, start: int, bar: bool = True, measured: Collection[int] = (),
                 stream: TextIO | None = None):
        self.name, self.total = name, total
        self.stream = stream or sys.stderr
        self.every = max(1, total // 10)
        self.times = StepTimes(total, start, measured)
        self.started = self.last = time.monotonic()
        self.bar = None
        if bar and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, leave=False, dynamic_ncols=True, file=self.stream,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def measuring(self, step: int) -> None:
        """A measurement of ``step`` starts (shown until the step ends)."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"measuring step {step}", refresh=True)
        elif step == 0 or step % self.every == 0:
            print(f"[{self.name}] step {step + 1}/{self.total}: measuring", file=self.stream, flush=True)

    def update(self, step: int, loss: float, position: float | None) -> None:
        now = time.monotonic()
        self.times.add(step, now - self.last)
        self.last = now
        eta = self.times.remaining(step)
        p = f"{position:.3g}" if position is not None else "-"
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"ETA {duration(eta)}, loss {loss:.4g}, P {p}", refresh=False)
        elif step % self.every == 0 or step == self.total - 1:
            print(f"[{self.name}] step {step + 1}/{self.total} loss {loss:.4g} P {p} "
                  f"elapsed {duration(now - self.started)} ETA {duration(eta)}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SweepProgress:
    """Runs done of all the sweep's runs, with the time so far and an ETA from the runs done since it
    started (runs skipped as already done count as done, not as time)."""

    def __init__(self, total: int, done: int = 0, stream: TextIO | None = None):
        self.total, self.done, self.finished_here = total, done, 0
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.bar = None
        if total > 1 and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc="sweep", unit="run", dynamic_ncols=True, file=self.stream,
                            position=0, bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| [{elapsed}{postfix}]")

    def eta(self) -> float | None:
        if not self.finished_here:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.finished_here * (self.total - self.done)

    def run_done(self, name: str, status: str) -> None:
        self.done += 1
        self.finished_here += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"ETA {duration(self.eta())}", refresh=False)
            self.bar.update(1)
        elif self.total > 1:
            print(f"[sweep] {self.done}/{self.total} runs done ({name}: {status}) elapsed "
                  f"{duration(time.monotonic() - self.started)} ETA {duration(self.eta())}", file=self.stream,
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
