"""The ``local`` executor: one run after another in this process (the default)."""

from __future__ import annotations

from specreach.engine.executors import Executor, Plan, run_guarded


class LocalExecutor(Executor):
    """One run after another, in this process."""

    name = "local"

    def run(self, runs, stop, done=None):
        plan = Plan(runs, done)
        while not stop.is_set() and (run := plan.next_ready()) is not None:
            plan.record(run_guarded(run, stop.is_set))
        return plan.ordered_results()
