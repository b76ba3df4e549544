"""Executors: how the runs of a spec are run — one after another here, in worker processes, on a
Ray cluster, or by a plugin's executor.

An executor receives picklable :class:`~specreach.engine.runs.RunSpec`\\ s and returns their
:class:`~specreach.engine.runs.RunResult`\\ s. It starts a run only once the runs it ``needs``
have finished (:class:`Plan`), stops every run at a step boundary with a checkpoint when asked
(``stop``), and turns a run whose process died into a FAILED result marked ``crashed`` — only
that run's — which resuming runs again from its last checkpoint.

A third party adds one through the ``register_executors`` hook::

    class SlurmExecutor(Executor):
        name = "slurm"
        Params = SlurmParams          # validated from the spec's execution.params

        def run(self, runs, stop, done):
            ...                       # call specreach.engine.session.run_session(run) on the cluster

This module imports no torch: the spec layer validates ``execution.params`` through it.
"""

from __future__ import annotations

import sys
import threading
import traceback
import warnings
from contextlib import contextmanager
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from specreach.engine.progress import SweepProgress
from specreach.engine.runs import RunResult, RunSpec


class ExecutorFailed(RuntimeError):
    """The executor itself failed (not one of its runs): the runs it started recorded how they ended."""


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Executor(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, **params):
        self.params = self.Params(**params)

    @abstractmethod
    def run(self, runs: Sequence[RunSpec], stop: threading.Event,
            done: Mapping[str, RunResult] | None = None) -> list[RunResult]:
        """Run ``runs`` (in an order their ``needs`` allow) until all are done or ``stop`` is set.

        ``done``: results of runs of the same spec that ended earlier (needs may name them).
        Returns the results of the runs that were started or refused, in the order of ``runs``.
        """


class Plan:
    """Which run may start next: the runs whose needs have all finished, in the given order.

    A run whose need failed is not run: it gets a FAILED result that says why.
    """

    def __init__(self, runs: Sequence[RunSpec], done: Mapping[str, RunResult] | None = None):
        self.order = [run.name for run in runs]
        self.pending = list(runs)
        self.outcomes: dict[str, RunResult] = dict(done or {})
        self.results: dict[str, RunResult] = {}
        self.progress = SweepProgress(len(runs) + len(self.outcomes), done=len(self.outcomes))
        known = set(self.order) | set(self.outcomes)
        for run in runs:
            missing = [need for need in run.needs if need not in known]
            if missing:
                raise ValueError(f"run {run.name} needs {', '.join(missing)}, which is not a run of this spec")

    def next_ready(self) -> RunSpec | None:
        """The first pending run that may start now (removed from pending), or None."""
        for run in list(self.pending):
            needed = [self.outcomes.get(name) for name in run.needs]
            failed = [result.name for result in needed if result is not None and result.status == "FAILED"]
            if failed:
                self.pending.remove(run)
                self.record(RunResult(run.name, "FAILED", None, run.output_dir,
                                      f"not run: it needs {', '.join(failed)}, which failed"))
            elif all(result is not None and result.status == "FINISHED" for result in needed):
                self.pending.remove(run)
                return run
        return None

    def record(self, result: RunResult) -> None:
        self.outcomes[result.name] = result
        self.results[result.name] = result
        self.progress.run_done(result.name, result.status)

    def retry(self, run: RunSpec) -> None:
        """Put a run back at the front (its process died; it resumes from its checkpoint)."""
        self.pending.insert(0, run)

    @property
    def waiting(self) -> bool:
        return bool(self.pending)

    def ordered_results(self) -> list[RunResult]:
        self.progress.close()
        return [self.results[name] for name in self.order if name in self.results]


def run_guarded(run: RunSpec, should_stop: Callable[[], bool], *, threads: int | None = None,
                progress_bar: bool = True, report: Callable[[dict], None] | None = None) -> RunResult:
    """:func:`~specreach.engine.session.run_session`, with an unexpected error (a bug, not bad input)
    reported with its traceback and turned into this run's FAILED result, so the others go on.

    ``report``: a run in another process sends its progress lines, and its warnings, there as events
    (the executor's sweep view prints them in order); its own terminal output would interleave."""
    from specreach.engine.session import run_session

    try:
        with warnings_to(report, run.name):
            return run_session(run, should_stop, threads=threads, progress_bar=progress_bar, report=report)
    except Exception as error:
        text = traceback.format_exc()
        if report is not None:
            report({"run": run.name, "line": f"[{run.name}] {text.rstrip()}"})
        else:
            print(text, end="", file=sys.stderr)
        message = f"{type(error).__name__}: {error} (traceback above)"
        from specreach.engine.run_folder import RunFolder

        folder = RunFolder(run.output_dir)
        status = folder.read_status()
        folder.write_status(**{**status, "status": "FAILED", "message": message})
        return RunResult(run.name, "FAILED", status.get("run_id"), run.output_dir, message)


@contextmanager
def warnings_to(report: Callable[[dict], None] | None, name: str):
    """Warnings of a run as lines of its progress events (``report``), or as they are (None)."""
    if report is None:
        yield
        return
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        report({"run": name, "line": f"[{name}] warning: {message}"})

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def record_crash(run: RunSpec, why: str) -> RunResult:
    """The process running ``run`` died: mark it FAILED (resumable) in its folder and in MLflow."""
    from specreach.engine.run_folder import RunFolder

    message = f"{why}; `specreach run --resume` continues it from its last checkpoint"
    result = RunFolder(run.output_dir).mark_crashed(run.name, message)
    if run.tracking.enabled and result.run_id:
        from specreach.tracking import Tracker

        Tracker.start(run.tracking.uri, run.tracking.experiment, run.name,
                      resume_run_id=result.run_id).finish("FAILED", message)
    return result
