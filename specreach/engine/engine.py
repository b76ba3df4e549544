"""The engine: a spec in, trained and measured runs out, tracked in MLflow.

::

    from specreach import Engine, load_spec
    results = Engine(load_spec("specs/quickstart.yaml")).run()
    results[0].metrics          # the run's metrics table (pandas DataFrame)

The spec expands to runs; its ``execution`` section picks the executor that runs them (here,
in worker processes, on a Ray cluster, or a plugin's); runs already done are skipped.

Output layout, under ``<output>/<spec name>/``: ``spec.yaml`` (the resolved spec),
``engine.json`` (the parent MLflow run), ``mlflow.db`` and ``mlartifacts/`` (the default local
tracking store), ``runs/<run>/`` (see :mod:`specreach.engine.run_folder`) and ``plots/``.
"""

from __future__ import annotations

import json
import signal
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import yaml

from specreach.engine.executors import Executor
from specreach.engine.run_folder import RunFolder
from specreach.engine.runs import RunResult, RunSpec, TrackingTarget, expand
from specreach.plugins import create
from specreach.spec import Spec
from specreach.tracking import Tracker, flatten, local_tracking_uri


class Engine:
    def __init__(self, spec: Spec, *, output: str | Path | None = None, tracking_uri: str | None = None):
        self.spec = spec
        self.root = Path(output if output is not None else spec.output) / spec.name
        self.tracking_uri = tracking_uri or spec.tracking.uri or local_tracking_uri(self.root)
        self._stop = threading.Event()

    @classmethod
    def resume(cls, directory: str | Path, *, tracking_uri: str | None = None,
               overrides: Sequence[str] = ()) -> "Engine":
        """Continue the runs of an interrupted engine from its output directory.

        ``overrides`` may change how the runs execute (``execution.…``), never what they compute.
        """
        from specreach.config import load_spec

        directory = Path(directory)
        spec_path = directory / "spec.yaml"
        if not spec_path.is_file():
            raise FileNotFoundError(f"{directory} is not a specreach run directory: it has no spec.yaml")
        changed = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("execution")]
        if changed:
            raise ValueError(f"--resume continues the runs as they were; only execution.* may be overridden, "
                             f"not {', '.join(changed)}")
        spec = load_spec(spec_path, overrides) if overrides else Spec.model_validate(yaml.safe_load(spec_path.read_text()))
        state = json.loads((directory / "engine.json").read_text()) if (directory / "engine.json").exists() else {}
        return cls(spec, output=directory.parent, tracking_uri=tracking_uri or state.get("tracking_uri"))

    def runs(self, parent_run_id: str | None = None) -> list[RunSpec]:
        target = TrackingTarget(
            enabled=self.spec.tracking.enabled, uri=self.tracking_uri,
            experiment=self.spec.tracking.experiment or self.spec.name,
            artifact_root=self.root / "mlartifacts", parent_run_id=parent_run_id,
        )
        return expand(self.spec, self.root, target)

    def executor(self) -> Executor:
        execution = self.spec.execution
        return create("executor", execution.kind, **execution.params)

    def stop(self) -> None:
        """Ask the runs to stop at the next step boundary (what SIGINT/SIGTERM do)."""
        self._stop.set()

    def run(self) -> list[RunResult]:
        self.root.mkdir(parents=True, exist_ok=True)
        resolved = self.root / "spec.yaml"
        resolved.write_text(yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=False))
        parent = self._parent_tracker()
        runs = self.runs(parent.run_id)
        done = {run.name: result for run in runs if (result := RunFolder(run.output_dir).result(run.name))}
        try:
            with self._signals_stop():
                ran = {result.name: result for result in
                       self.executor().run([run for run in runs if run.name not in done], self._stop, done)}
        except BaseException as error:  # a second Ctrl-C, or an executor that could not start
            parent.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED",
                          f"{type(error).__name__}: {error}")
            raise
        results = [done.get(run.name) or ran[run.name] for run in runs if run.name in done or run.name in ran]
        for result in results:
            if result.name in ran and result.status == "FAILED":
                warnings.warn(f"run {result.name} failed: {result.message}", stacklevel=2)
        interrupted = self._stop.is_set() or any(r.status == "KILLED" for r in results) or len(results) < len(runs)
        plots = self._plots(results)
        parent.log_artifact(resolved)
        for path in plots:
            parent.log_artifact(path, "plots")
        failed = [r.name for r in results if r.status == "FAILED"]
        parent.finish("KILLED" if interrupted else "FAILED" if failed and len(failed) == len(results) else "FINISHED",
                      f"failed runs: {', '.join(failed)}" if failed else None)
        return results

    def _parent_tracker(self) -> Tracker:
        state_path = self.root / "engine.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        if not self.spec.tracking.enabled:
            return Tracker.disabled()
        tracker = Tracker.start(
            self.tracking_uri, self.spec.tracking.experiment or self.spec.name,
            self.spec.tracking.run_name or self.spec.name, artifact_root=self.root / "mlartifacts",
            tags={"specreach.spec": self.spec.name}, params=None if state.get("parent_run_id") else
            flatten(self.spec.model_dump(mode="json", exclude={"execution"})),
            resume_run_id=state.get("parent_run_id"),
        )
        state_path.write_text(json.dumps({"parent_run_id": tracker.run_id, "tracking_uri": self.tracking_uri}))
        return tracker

    def _plots(self, results: list[RunResult]) -> list[Path]:
        from specreach.paper.plots import plot_runs

        finished = [r for r in results if r.metrics_path.exists()]
        if not finished:
            return []
        try:
            return plot_runs(finished, self.root / "plots")
        except Exception as error:  # a plot must never lose a run
            warnings.warn(f"plotting failed ({type(error).__name__}: {error}); the metrics tables are intact",
                          stacklevel=2)
            return []

    @contextmanager
    def _signals_stop(self):
        """SIGINT and SIGTERM stop at a step boundary with a checkpoint (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self._stop.is_set():  # a second Ctrl-C stops hard
                signal.signal(signum, previous[signum])
                raise KeyboardInterrupt
            self._stop.set()

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
