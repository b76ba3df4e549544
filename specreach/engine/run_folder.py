"""The files of one run, under ``<output>/<spec>/runs/<run>/``, and its status file.

::

    metrics.csv     every recorded row (the metrics table; written row by row)
    run.json        what the run is: its run spec, fingerprint, code version, tags, number of steps
    status.json     RUNNING, FINISHED, FAILED or KILLED, the fingerprint, the MLflow run id and what
                    MLflow holds of the table, the step, a message
    checkpoint.pt   the latest resumable state (model, optimizer, scheduler, RNG, data position)
    final.pt        the trained model with its recipe (what probes of a trained backbone load)
    traceback.txt   where a run that failed on an unexpected error failed
    spectra/        per-step eNTK spectra of explicit-kernel estimators
    .lock           held by the process running the run (see :mod:`specreach.engine.locks`)

``status.json`` is the record an engine reads to skip runs that are done, so it is written last
and atomically. A file that cannot be read is an error naming it, never a guess.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable

from specreach.engine.runs import RunResult
from specreach.engine.sinks import Sink

class DamagedFile(ValueError):
    """A file of a run folder that cannot be read as what it should be."""

    def __init__(self, path: Path, what: str, remedy: str):
        super().__init__(f"{path}: {what}; {remedy}")
        self.path = path


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except OSError as error:  # a full disk, a read-only folder: name the file, leave no temporary behind
        temporary.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def read_json(path: Path, remedy: str) -> dict[str, Any]:
    """A JSON object from ``path`` ({} when there is no file); a damaged one is a :class:`DamagedFile`."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as error:
        raise DamagedFile(path, f"cannot be read ({error})", remedy) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        what = "is empty" if not text.strip() else f"is not valid JSON (truncated or damaged: {error.msg} at line " \
                                                   f"{error.lineno})"
        raise DamagedFile(path, what, remedy) from None
    if not isinstance(value, dict):
        raise DamagedFile(path, "does not hold a JSON object", remedy)
    return value


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics = self.path / "metrics.csv"
        self.description = self.path / "run.json"
        self.status_file = self.path / "status.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.final_model = self.path / "final.pt"
        self.traceback = self.path / "traceback.txt"
        self.spectra = self.path / "spectra"

    @property
    def remedy(self) -> str:
        return (f"delete the run's folder {self.path} to run it again from scratch (or rerun with --overwrite)")

    def read_status(self) -> dict[str, Any]:
        return read_json(self.status_file, self.remedy)

    def read_description(self) -> dict[str, Any]:
        return read_json(self.description, self.remedy)

    def write_status(self, **status: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(self.status_file, json.dumps(status, indent=2, default=str))

    def write_description(self, description: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(self.description, json.dumps(description, indent=2, default=str))

    def recorded(self) -> bool:
        """Whether an earlier attempt left anything in this folder."""
        return any(path.exists() for path in (self.status_file, self.checkpoint, self.metrics))

    def result(self, name: str) -> RunResult | None:
        """The recorded outcome of a FINISHED run (a run that failed or was stopped is run again)."""
        status = self.read_status()
        if status.get("status") != "FINISHED":
            return None
        return RunResult(name, status["status"], status.get("run_id"), self.path, status.get("message", ""),
                         status.get("final") or {})

    def mark_crashed(self, name: str, message: str) -> RunResult:
        """Record that the process running this run died: FAILED, but resumable from its checkpoint."""
        try:
            status = self.read_status()
        except DamagedFile:
            status = {}
        self.write_status(**{**status, "status": "FAILED", "message": message, "crashed": True})
        return RunResult(name, "FAILED", status.get("run_id"), self.path, message, crashed=True)

    def clear(self) -> None:
        """Remove everything an earlier attempt recorded (``--overwrite``); the lock file stays."""
        for child in self.path.iterdir() if self.path.is_dir() else ():
            if child.name == ".lock":
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def prune_checkpoints(self, keep: str) -> None:
        """What a finished run keeps: 'last' both files, 'final' final.pt, 'none' neither."""
        if keep in ("final", "none"):
            self.checkpoint.unlink(missing_ok=True)
        if keep == "none":
            self.final_model.unlink(missing_ok=True)


class StatusSink(Sink):
    """``status.json``: the run's status as it changes (RUNNING at the start, the outcome at the end),
    with the process and host that ran it, its fingerprint and what the tracking store holds."""

    def __init__(self, folder: RunFolder, run_id: str | None, **identity: Any):
        self.folder, self.run_id, self.identity = folder, run_id, identity
        self.tracking_state: Callable[[], dict[str, Any]] | None = None  # what MLflow holds (MlflowSink.record)
        self._started: float | None = None
        self._earlier = 0.0

    def status(self, status: str, message: str = "", **details: Any) -> None:
        tracking = {"tracking": self.tracking_state()} if self.tracking_state is not None else {}
        self.folder.write_status(status=status, run_id=self.run_id, message=message, pid=os.getpid(),
                                 host=socket.gethostname(), **self.identity, **details, **tracking,
                                 **self._wall_time())

    def _wall_time(self) -> dict[str, float]:
        """When this attempt started (epoch seconds), and the seconds every attempt so far has run."""
        now = time.time()
        if self._started is None:
            self._started = now
            try:
                self._earlier = float(self.folder.read_status().get("wall_seconds") or 0)
            except (TypeError, ValueError):  # a damaged status.json: count from here
                self._earlier = 0.0
        return {"started_at": self._started, "wall_seconds": round(self._earlier + now - self._started, 3)}
