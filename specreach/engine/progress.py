"""What a person watching a sweep sees: one bar across the sweep (runs done of all, with an ETA) and
one per run (steps, loss, P, ETA), or plain lines with elapsed time and ETA when stderr is not a
terminal (a log file, a batch job).

Runs in other processes (worker processes, Ray tasks) print nothing themselves: their
:class:`Progress` sends each line, with the run's step and ETA, as an event to the executor, whose
:class:`SweepProgress` prints the lines in the order they came, above its one bar, and never after
the sweep's last "N/N runs done". The sweep's ETA comes from the runs' own step times: the time
left of the runs in flight, plus the runs not started at the mean duration of those seen, divided
by the runs that go at once.

A run's ETA keeps training steps and measured steps apart: a measurement can cost a hundred
training steps, and an average over both would promise hours after a measured step 0 and minutes
after a long stretch of plain steps. Remaining time = remaining plain steps × their recent time +
remaining measured steps × the time measured steps took so far. While a measurement runs the bar
says so.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Collection, TextIO

#: Weight of the newest plain step in the running average of the step time.
SMOOTHING = 0.1
#: A run in another process reports its ETA to the sweep at most this often (besides its lines).
REPORT_SECONDS = 2.0

#: What a run reports to the sweep: {"run": name, "line": text or None, "eta": seconds or None,
#: "elapsed": seconds}; a warning's event has the run and the line only.
Event = dict[str, Any]


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
    terminal, ``bar=False``): every tenth of the run, with elapsed time and ETA. With ``report`` (a run
    in another process) the lines, and the ETA every few seconds, go to ``report`` as events instead."""

    def __init__(self, name: str, total: int, start: int, bar: bool = True, measured: Collection[int] = (),
                 stream: TextIO | None = None, report: Callable[[Event], None] | None = None):
        self.name, self.total = name, total
        self.stream = stream or sys.stderr
        self.report = report
        self.every = max(1, total // 10)
        self.times = StepTimes(total, start, measured)
        self.started = self.last = self.reported = time.monotonic()
        self.bar = None
        if bar and report is None and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, leave=False, dynamic_ncols=True, file=self.stream,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def measuring(self, step: int) -> None:
        """A measurement of ``step`` starts (shown until the step ends)."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"measuring step {step}", refresh=True)
        elif step == 0 or step % self.every == 0:
            self._line(f"[{self.name}] step {step + 1}/{self.total}: measuring", None)

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
            self._line(f"[{self.name}] step {step + 1}/{self.total} loss {loss:.4g} P {p} "
                       f"elapsed {duration(now - self.started)} ETA {duration(eta)}", eta)
        elif self.report is not None and now - self.reported >= REPORT_SECONDS:
            self._send(None, eta)

    def _line(self, text: str, eta: float | None) -> None:
        if self.report is None:
            print(text, file=self.stream, flush=True)
        else:
            self._send(text, eta)

    def _send(self, text: str | None, eta: float | None) -> None:
        assert self.report is not None  # only runs that report send
        self.reported = time.monotonic()
        self.report({"run": self.name, "line": text, "eta": eta, "elapsed": self.reported - self.started})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SweepProgress:
    """Runs done of all the sweep's runs, the lines of runs in other processes above it, and an ETA
    (runs skipped as already done count as done, not as time)."""

    def __init__(self, total: int, done: int = 0, stream: TextIO | None = None):
        self.total, self.done = total, done
        self.stream = stream or sys.stderr
        self.started = self.last_done = time.monotonic()
        self.running: dict[str, Event] = {}  # the latest event of each run in flight
        self.durations: list[float] = []  # wall time of the runs that ended here
        self.at_once = 1  # the most runs seen in flight together: how many the executor runs at once
        self.bar = None
        if total > 1 and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc="sweep", unit="run", dynamic_ncols=True, file=self.stream,
                            position=0, bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| [{elapsed}{postfix}]")

    def eta(self) -> float | None:
        """The in-flight runs' own ETAs, plus the runs not started at the mean duration of the runs seen
        (ended, or in flight: elapsed plus ETA), over the most runs seen in flight together; None before any
        estimate."""
        flying = {name: event for name, event in self.running.items() if "eta" in event and "elapsed" in event}
        seen = self.durations + [event["elapsed"] + event["eta"] for event in flying.values()]
        if not seen:
            return None
        waiting = self.total - self.done - len(self.running)
        return (sum(event["eta"] for event in flying.values()) + waiting * sum(seen) / len(seen)) / self.at_once

    def report(self, event: Event) -> None:
        """A run's event: its line (printed above the bar), its ETA and elapsed time (kept until newer ones come)."""
        known = self.running.setdefault(event["run"], {})
        self.at_once = max(self.at_once, len(self.running))
        known.update({key: value for key, value in event.items() if value is not None and key != "line"})
        if event.get("line"):
            self._print(event["line"])
        if self.bar is not None:
            self.bar.set_postfix_str(f"ETA {duration(self.eta())}", refresh=True)

    def run_done(self, name: str, status: str) -> None:
        event = self.running.pop(name, None)
        now = time.monotonic()
        # A run in this process reports nothing: one after another, it took the time since the last one.
        self.durations.append(event["elapsed"] if event and "elapsed" in event else now - self.last_done)
        self.last_done = now
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(f"ETA {duration(self.eta())}", refresh=False)
            self.bar.update(1)
        elif self.total > 1:
            self._print(f"[sweep] {self.done}/{self.total} runs done ({name}: {status}) elapsed "
                        f"{duration(time.monotonic() - self.started)} ETA {duration(self.eta())}")

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
