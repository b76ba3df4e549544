"""The engine: a spec in, trained and measured runs out, tracked in MLflow.

::

    from specreach import Engine, load_spec
    results = Engine(load_spec("specs/quickstart.yaml")).run()
    results[0].metrics          # the run's metrics table (pandas DataFrame)

The spec expands to runs; its ``execution`` section picks the executor that runs them (here,
in worker processes, on a Ray cluster, or a plugin's). A run already FINISHED under the same
fingerprint (what it computes, and the specreach release) is skipped; one that stopped or failed
is run again from its last checkpoint. A run folder that holds a run of another fingerprint (the
spec changed) is never skipped, resumed or reported: the engine refuses before anything runs,
unless told to ``overwrite``. One engine at a time writes an output folder (a lock names the
process holding it).

Output layout, under ``<output>/<spec name>/``: ``spec.yaml`` (the resolved spec),
``engine.json`` (the parent MLflow run), ``mlflow.db`` and ``mlartifacts/`` (the default local
tracking store), ``runs/<run>/`` (see :mod:`specreach.engine.run_folder`) and ``plots/`` (drawn
by the built-in ``after_sweep`` hook when the runs are over: the engine itself knows no figures).
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import yaml

from specreach.engine.executors import Executor
from specreach.engine.locks import FolderLock
from specreach.engine.run_folder import RunFolder, read_json, write_atomically
from specreach.engine.runs import RunResult, RunSpec, TrackingTarget, computed, differences, expand, fingerprint
from specreach.plugins import create, get_plugin_manager
from specreach.spec import Spec
from specreach.tracking import Tracker, default_tracking_uri, flatten


class ChangedSpec(ValueError):
    """The output folder holds runs of another spec (or specreach release) under these names."""


class Engine:
    def __init__(self, spec: Spec, *, output: str | Path | None = None, tracking_uri: str | None = None,
                 overwrite: bool = False):
        self.spec = spec
        self.root = Path(output if output is not None else spec.output) / spec.name
        self.tracking_uri = tracking_uri or spec.tracking.uri or default_tracking_uri(self.root)
        self.overwrite = overwrite
        self._stop = threading.Event()

    @classmethod
    def resume(cls, directory: str | Path, spec: Spec, *, tracking_uri: str | None = None) -> "Engine":
        """Continue the runs of an interrupted engine from its output directory, with its spec as
        :func:`specreach.config.load_resumed_spec` reads it back, in the tracking store it started in."""
        directory = Path(directory)
        state = read_json(directory / "engine.json", "delete it to start a new parent run in MLflow")
        return cls(spec, output=directory.parent, tracking_uri=tracking_uri or state.get("tracking_uri"))

    def runs(self, parent_run_id: str | None = None) -> list[RunSpec]:
        target = TrackingTarget(
            enabled=self.spec.tracking.uses_mlflow, uri=self.tracking_uri,
            experiment=self.spec.tracking.experiment or self.spec.name,
            artifact_root=self.root / "mlartifacts", parent_run_id=parent_run_id,
            sinks=self.spec.tracking.plugin_sinks(),
        )
        return expand(self.spec, self.root, target)

    def executor(self) -> Executor:
        execution = self.spec.execution
        return create("executor", execution.kind, **execution.params)

    def stop(self) -> None:
        """Ask the runs to stop at the next step boundary (what SIGINT/SIGTERM do)."""
        self._stop.set()

    def run(self) -> list[RunResult]:
        with FolderLock(self.root, "output folder"):
            return self._run()

    def _run(self) -> list[RunResult]:
        self.root.mkdir(parents=True, exist_ok=True)
        self._check_recorded_runs(self.runs())  # before anything is written
        resolved = self.root / "spec.yaml"
        write_atomically(resolved, yaml.safe_dump(self.spec.model_dump(mode="json"), sort_keys=False))
        parent = self._parent_tracker()
        runs = self.runs(parent.run_id)
        done = {run.name: replace(result, skipped=True) for run in runs
                if (result := RunFolder(run.output_dir).result(run.name))}
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
        made = get_plugin_manager().after_sweep(results, self.root)  # the figures, and a plugin's summaries
        parent.log_artifact(resolved)
        for path in made:
            parent.log_artifact(path, Path(path).parent.name)
        failed = [r.name for r in results if r.status == "FAILED"]
        parent.finish("KILLED" if interrupted else "FAILED" if failed and len(failed) == len(results) else "FINISHED",
                      f"failed runs: {', '.join(failed)}" if failed else None)
        return results

    def _check_recorded_runs(self, runs: list[RunSpec]) -> None:
        """Refuse (or, overwriting, clear) run folders that hold runs of another fingerprint."""
        changed = []
        for run in runs:
            folder = RunFolder(run.output_dir)
            if not folder.recorded():
                continue
            if self.overwrite:
                self._forget(folder)
                continue
            recorded = folder.read_status().get("fingerprint") if folder.status_file.exists() else \
                _checkpoint_fingerprint(folder)
            if recorded != fingerprint(run):
                old = folder.read_description().get("run_spec")
                what = differences(computed(RunSpec.model_validate(old)), computed(run)) if old else []
                detail = "; ".join(what[:4]) if what else "recorded by another specreach release (or before runs " \
                                                           "had fingerprints)"
                changed.append(f"  {run.name}: {detail}")
        if changed:
            shown = "\n".join(changed[:8]) + (f"\n  … and {len(changed) - 8} more" if len(changed) > 8 else "")
            raise ChangedSpec(f"{self.root} holds {len(changed)} run{'s' * (len(changed) > 1)} of another spec "
                              f"under the same name{'s' * (len(changed) > 1)}:\n{shown}\nTheir results would be "
                              "reported under this spec. Give a fresh --output, or rerun with --overwrite (runs "
                              "every run of the spec again from scratch).")

    def _forget(self, folder: RunFolder) -> None:
        """--overwrite: the run's folder is emptied and its MLflow run deleted (MLflow keeps it restorable)."""
        try:
            run_id = folder.read_status().get("run_id")
        except ValueError:
            run_id = None
        if run_id and self.spec.tracking.uses_mlflow:
            Tracker.existing(self.tracking_uri, run_id).delete()
        folder.clear()

    def _spec_fingerprint(self) -> str:
        what = self.spec.model_dump(mode="json", exclude={"execution", "output"})
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def _parent_tracker(self) -> Tracker:
        state_path = self.root / "engine.json"
        state = read_json(state_path, "delete it to start a new parent run in MLflow")
        if self.overwrite and state.get("parent_run_id") and self.spec.tracking.uses_mlflow:
            Tracker.existing(self.tracking_uri, state["parent_run_id"]).delete()
            state = {}
        if not self.spec.tracking.uses_mlflow:
            return Tracker.disabled()
        # A changed spec gets a parent run of its own: MLflow params cannot change.
        same_spec = state.get("spec_fingerprint") == self._spec_fingerprint()
        previous = state.get("parent_run_id") if same_spec else None
        tracker = Tracker.start(
            self.tracking_uri, self.spec.tracking.experiment or self.spec.name,
            self.spec.tracking.run_name or self.spec.name, artifact_root=self.root / "mlartifacts",
            tags={"specreach.spec": self.spec.name}, params=None if previous else
            flatten(self.spec.model_dump(mode="json", exclude={"execution"})),
            resume_run_id=previous,
        )
        write_atomically(state_path, json.dumps({"parent_run_id": tracker.run_id, "tracking_uri": self.tracking_uri,
                                                 "spec_fingerprint": self._spec_fingerprint()}))
        return tracker

    @contextmanager
    def _signals_stop(self):
        """SIGINT and SIGTERM stop at a step boundary with a checkpoint (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self._stop.is_set():  # a second Ctrl-C stops hard
                signal.signal(signum, signal.SIG_IGN)  # a third does not interrupt the recording of the stop
                raise KeyboardInterrupt
            self._stop.set()

        for sig in previous:
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def _checkpoint_fingerprint(folder: RunFolder) -> str | None:
    """The fingerprint in a run's checkpoint (a run that died before writing its status)."""
    from specreach.engine.session import load_checkpoint

    state = load_checkpoint(folder.checkpoint)
    return state.get("fingerprint") if state is not None else None
