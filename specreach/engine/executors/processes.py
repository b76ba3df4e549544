"""The ``processes`` executor: N worker processes on this machine, one run at a time each.

- Workers are started with ``spawn`` (a clean interpreter: no inherited torch threads or locks)
  and live for the whole execution, so torch is imported once per worker, not once per run.
- Workers print nothing: a run's progress lines and warnings come back through its worker's pipe,
  ahead of its result, and the sweep view prints them (:mod:`specreach.engine.progress`).
- Each run is pinned to its thread count: ``train.threads`` where the spec sets it, otherwise the
  worker's share of the cores (cores / workers), so runs do not oversubscribe the machine.
- Ctrl-C (or SIGTERM to this process) sets a shared stop event: every worker stops its run at
  the next step boundary and writes a checkpoint. Workers ignore SIGINT themselves, so a
  terminal's Ctrl-C reaches them only through that event; they are started with SIGINT blocked
  and ignore it before unblocking it, so a Ctrl-C while a worker starts cannot kill it either.
- A worker that dies (killed, out of memory, a crash in native code) takes only its own run
  down: the run is started again in a fresh worker from its last checkpoint, up to
  ``max_retries`` times, then marked FAILED (crashed: ``--resume`` retries it). A worker that dies
  while idle holds no run: a fresh one takes its place when a run is handed out.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from specreach.engine.executors import Executor, Plan, record_crash, run_guarded
from specreach.engine.runs import RunSpec


class ProcessesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    workers: int | None = Field(None, ge=1, description=(
        "Worker processes (default: this machine's cores divided by the runs' train.threads, or the cores)."))
    max_retries: int = Field(2, ge=0, description=(
        "Times a run whose worker died is started again (from its last checkpoint) before it is marked FAILED."))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


READY = "ready"
PROGRESS = "progress"
NOT_STARTED = ("worker processes exit as they start (exit code {code}). With execution kind 'processes', "
               "a script that runs the engine must do so under `if __name__ == \"__main__\":` (workers are "
               "started with spawn, which imports the main module again); otherwise see the error printed above")
KILLED_STARTING = "a worker process was killed by signal {signal} as it started (before it could take a run)"


def _worker_main(connection, stop_event, threads: int) -> None:
    """A worker: say it is ready, then receive a run, run it (its progress sent as ``(PROGRESS, event)``
    messages), send its result; None ends the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us through stop_event
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent while we started
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.set())
    connection.send(READY)
    while True:
        run = connection.recv()
        if run is None:
            return
        should_stop = lambda: stop_event.is_set() or stopped.is_set()  # noqa: E731
        report = lambda event: connection.send((PROGRESS, event))  # noqa: E731
        connection.send(run_guarded(run, should_stop, threads=threads, progress_bar=False, report=report))


@dataclass
class _Worker:
    process: Any
    connection: Any
    run: RunSpec | None = None
    ready: bool = False  # it started (a worker that dies before is a bootstrap problem, not a crash)


class ProcessExecutor(Executor):
    """Runs in N worker processes on this machine."""

    name = "processes"
    Params = ProcessesParams

    def workers_for(self, runs) -> int:
        if self.params.workers is not None:
            return self.params.workers
        threads = max((run.train.threads or 1 for run in runs), default=1)
        return max(1, available_cores() // threads)

    def run(self, runs, stop, done=None):
        plan = Plan(runs, done)
        count = max(1, min(self.workers_for(runs), len(runs)))
        threads = max(1, available_cores() // count)
        context = multiprocessing.get_context("spawn")
        stop_event = context.Event()
        workers: list[_Worker] = []
        attempts: dict[str, int] = {}

        def start_worker() -> _Worker:
            parent_end, child_end = context.Pipe()
            process = context.Process(target=_worker_main, args=(child_end, stop_event, threads),
                                      name="specreach-worker", daemon=True)
            # Started with SIGINT blocked (the mask survives exec), so a Ctrl-C that reaches the process group
            # while it starts is pending, then discarded when it ignores SIGINT; ours waits for the unblock.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                process.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            child_end.close()
            worker = _Worker(process, parent_end)
            workers.append(worker)
            return worker

        try:
            while True:
                if stop.is_set():
                    stop_event.set()
                else:
                    self._hand_out(plan, workers, count, start_worker)
                busy = [worker for worker in workers if worker.run is not None]
                if not busy:
                    break
                wait([w.connection for w in busy] + [w.process.sentinel for w in busy], timeout=0.5)
                for worker in busy:
                    self._collect(worker, plan, workers, attempts, stop)
        finally:
            stop_event.set()
            self._shut_down(workers)
        return plan.ordered_results()

    def _hand_out(self, plan: Plan, workers: list[_Worker], count: int, start_worker) -> None:
        while True:
            for gone in [w for w in workers if w.run is None and not w.process.is_alive()]:
                self._discard(gone, workers)  # died while idle: it held no run, a fresh worker replaces it
            idle = next((w for w in workers if w.run is None), None)
            if idle is None and len(workers) >= count:
                return
            run = plan.next_ready()
            if run is None:
                return
            worker = idle or start_worker()
            worker.run = run
            try:
                worker.connection.send(run)
            except OSError:  # it died just now, before it got the run (BrokenPipeError)
                self._discard(worker, workers)
                plan.retry(run)

    @staticmethod
    def _discard(worker: _Worker, workers: list[_Worker]) -> None:
        workers.remove(worker)
        worker.connection.close()
        worker.process.join(timeout=5)

    def _collect(self, worker: _Worker, plan: Plan, workers: list[_Worker], attempts: dict[str, int],
                 stop: threading.Event) -> None:
        run = worker.run
        try:
            while worker.connection.poll():
                message = worker.connection.recv()
                if message == READY:
                    worker.ready = True
                elif isinstance(message, tuple) and message[0] == PROGRESS:
                    plan.progress.report(message[1])  # in the order the worker sent them, before its result
                else:
                    plan.record(message)
                    worker.run = None
                    return
        except (EOFError, OSError):
            pass  # the worker died while sending: treat as a crash
        if worker.process.is_alive():
            return
        workers.remove(worker)
        worker.connection.close()
        code = worker.process.exitcode
        if not worker.ready:
            if stop.is_set():  # stopped while it started: the run never began, --resume runs it
                if run is not None:
                    plan.retry(run)
                return
            raise RuntimeError(KILLED_STARTING.format(signal=-code) if code is not None and code < 0
                               else NOT_STARTED.format(code=code))
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        attempts[run.name] = attempts.get(run.name, 0) + 1
        if attempts[run.name] <= self.params.max_retries and not stop.is_set():
            plan.retry(run)
        else:
            tries = attempts[run.name]
            plan.record(record_crash(run, f"its worker process died ({why}) {tries} time{'s' * (tries > 1)}"))

    @staticmethod
    def _shut_down(workers: list[_Worker]) -> None:
        for worker in workers:
            try:
                worker.connection.send(None)
            except (OSError, ValueError):
                pass
        for worker in workers:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=10)
            worker.connection.close()
