"""The engine: a spec in, trained and measured runs out, tracked in MLflow.

::

    from specreach import Engine, load_spec
    results = Engine(load_spec("specs/quickstart.yaml")).run()
    results[0].metrics          # the run's metrics table (pandas DataFrame)

The spec expands to runs; its ``execution`` section picks the executor that runs them (here,
in worker processes, on a Ray cluster, or a plugin's). A run already FINISHED under the same
fingerprint (what it computes, and the specreach release) is skipped; one that stopped or failed
is run again from its last checkpoint. A run folder that holds a run of another fingerprint (the
spec changed), or a run this spec does not have (so that spec.yaml would no longer describe it), is
never skipped, resumed or reported: the engine refuses before anything runs, unless told to
``overwrite``. One engine at a time writes an output folder (a lock names the process holding it).
Every run ends FINISHED, FAILED or KILLED with a reason, a run that never started included.

Output layout, under ``<output>/<spec name>/``: ``spec.yaml`` (the resolved spec),
``engine.json`` (the parent MLflow run), ``mlflow.db`` and ``mlartifacts/`` (the default local
tracking store), ``runs/<run>/`` (see :mod:`specreach.engine.run_folder`) and ``plots/`` (drawn
by the built-in ``after_sweep`` hook when the runs are over: the engine itself knows no figures).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import yaml

from specreach.engine.executors import Executor, ExecutorFailed
from specreach.engine.locks import FolderLock
from specreach.engine.run_folder import RunFolder, read_json, write_atomically
from specreach.engine.runs import RunResult, RunSpec, TrackingTarget, computed, differences, expand, fingerprint
from specreach.plugins import create, get_plugin_manager
from specreach.spec import Spec
from specreach.tracking import Tracker, check_tracking_uri, default_tracking_uri, flatten, own_store


class ChangedSpec(ValueError):
    """The output folder holds runs of another spec (or specreach release) under these names."""


class Engine:
    def __init__(self, spec: Spec, *, output: str | Path | None = None, tracking_uri: str | None = None,
                 overwrite: bool = False):
        self.spec = spec
        self.root = Path(output if output is not None else spec.output) / spec.name
        self.tracking_uri = tracking_uri or spec.tracking.uri or default_tracking_uri(self.root)
        if spec.tracking.enabled:
            check_tracking_uri(self.tracking_uri)
        self.overwrite = overwrite
        self._stop = threading.Event()

    @classmethod
    def resume(cls, directory: str | Path, spec: Spec, *, tracking_uri: str | None = None) -> "Engine":
        """Continue the runs of an interrupted engine from its output directory, with its spec as
        :func:`specreach.config.load_resumed_spec` reads it back, in the tracking store it started in."""
        directory = Path(directory)
        state = read_json(directory / "engine.json", "delete it to start a new parent run in MLflow")
        recorded_uri = state.get("tracking_uri")
        if tracking_uri is None:
            recorded_uri = own_store(directory, recorded_uri)
        engine = cls(spec, output=directory.parent, tracking_uri=tracking_uri or recorded_uri)
        engine.root = directory  # the folder as it is named now (a renamed folder is still this spec's)
        return engine

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
        for folder in (self.root, *self.root.parents):  # the first that exists must be a folder
            if folder.exists():
                if not folder.is_dir():
                    raise ValueError(f"output {folder} is a file, not a folder: give a folder (--output DIR)")
                break
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
        except BaseException as error:  # a second Ctrl-C, or an executor that could not start or broke down
            parent.finish("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED",
                          f"{type(error).__name__}: {error}")
            if isinstance(error, (KeyboardInterrupt, ValueError, OSError)) or not isinstance(error, Exception):
                raise  # bad input or a system error: already says what
            raise ExecutorFailed(f"the {self.spec.execution.kind} executor failed ({type(error).__name__}: {error}); "
                                 f"the runs it started recorded how they ended: `specreach run --resume {self.root}` "
                                 "continues") from error
        stopped = self._stop.is_set()
        results = [done.get(run.name) or ran.get(run.name) or _never_started(run, stopped) for run in runs]
        for result in results:
            if result.name not in done and result.status == "FAILED":
                warnings.warn(f"run {result.name} failed: {result.message}", stacklevel=2)
        interrupted = stopped or any(r.status == "KILLED" for r in results)
        made = get_plugin_manager().after_sweep(results, self.root)  # the figures, and a plugin's summaries
        parent.log_artifact(resolved)
        for path in made:
            parent.log_artifact(path, Path(path).parent.name)
        failed = [r.name for r in results if r.status == "FAILED"]
        parent.finish("KILLED" if interrupted else "FAILED" if failed and len(failed) == len(results) else "FINISHED",
                      f"failed runs: {', '.join(failed)}" if failed else None)
        return results

    def _check_recorded_runs(self, runs: list[RunSpec]) -> None:
        """Refuse (or, overwriting, clear) run folders that hold runs of another fingerprint, and runs
        this spec does not have (spec.yaml would then describe runs it did not produce)."""
        self._check_runs_not_in_this_spec({run.name for run in runs})
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

    def _check_runs_not_in_this_spec(self, names: set[str]) -> None:
        runs_folder = self.root / "runs"
        others = sorted(path for path in runs_folder.iterdir() if path.is_dir() and path.name not in names
                        and RunFolder(path).recorded()) if runs_folder.is_dir() else []
        if not others:
            return
        if self.overwrite:
            for path in others:
                self._forget(RunFolder(path))
                shutil.rmtree(path)
            return
        shown = ", ".join(path.name for path in others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8
                                                                else "")
        changes = self._changes_to_the_recorded_spec()
        raise ChangedSpec(f"{self.root} holds {len(others)} run{'s' * (len(others) > 1)} that this spec does not "
                          f"run: {shown}" + (f" (its spec.yaml changed: {'; '.join(changes[:6])})" if changes else "")
                          + ". One output folder holds one spec's runs: spec.yaml would no longer describe them. "
                          "Give a fresh --output, or rerun with --overwrite (removes them, and runs every run of "
                          "this spec again from scratch).")

    def _changes_to_the_recorded_spec(self) -> list[str]:
        """``["train.lr: 0.003 → 0.001", ...]`` between the output's spec.yaml and this spec."""
        try:
            recorded = yaml.safe_load((self.root / "spec.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return []
        if not isinstance(recorded, dict):
            return []
        current = self.spec.model_dump(mode="json")
        for what in (recorded, current):
            for key in ("execution", "output"):
                what.pop(key, None)
        return differences(recorded, current)

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


def _never_started(run: RunSpec, stopped: bool) -> RunResult:
    """The outcome of a run the executor never started: stopped before its turn, or left out."""
    if stopped:
        return RunResult(run.name, "KILLED", None, run.output_dir, "stopped before it started; `specreach run "
                                                                     "--resume` runs it")
    return RunResult(run.name, "FAILED", None, run.output_dir, "never started: the executor ended without running "
                                                                 "it; `specreach run --resume` runs it")


def _checkpoint_fingerprint(folder: RunFolder) -> str | None:
    """The fingerprint in a run's checkpoint (a run that died before writing its status)."""
    from specreach.engine.session import load_checkpoint

    state = load_checkpoint(folder.checkpoint)
    return state.get("fingerprint") if state is not None else None
