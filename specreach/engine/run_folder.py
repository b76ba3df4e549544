"""The files of one run, under ``<output>/<spec>/runs/<run>/``, and its status file.

::

    metrics.csv     every recorded row (the metrics table; written row by row)
    run.json        what the run is: its run spec, tags, number of steps
    status.json     RUNNING, FINISHED, FAILED or KILLED, the MLflow run id, the step, a message
    checkpoint.pt   the latest resumable state (model, optimizer, scheduler, RNG, data position)
    final.pt        the trained model with its recipe (what probes of a trained backbone load)
    spectra/        per-step eNTK spectra of explicit-kernel estimators

``status.json`` is the record an engine reads to skip runs that are done, so it is written last
and atomically.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from specreach.engine.runs import RunResult
from specreach.engine.sinks import Sink

DONE = ("FINISHED", "FAILED")


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics = self.path / "metrics.csv"
        self.description = self.path / "run.json"
        self.status_file = self.path / "status.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.final_model = self.path / "final.pt"
        self.spectra = self.path / "spectra"

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def write_status(self, **status: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        temporary = self.status_file.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(status, indent=2, default=str))
        temporary.replace(self.status_file)

    def write_description(self, description: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.description.write_text(json.dumps(description, indent=2, default=str))

    def result(self, name: str) -> RunResult | None:
        """The recorded outcome of a run that is done (FINISHED, or FAILED on its own account)."""
        status = self.read_status()
        if status.get("status") not in DONE or status.get("crashed"):
            return None
        return RunResult(name, status["status"], status.get("run_id"), self.path, status.get("message", ""),
                         status.get("final") or {})

    def mark_crashed(self, name: str, message: str) -> RunResult:
        """Record that the process running this run died: FAILED, but resumable from its checkpoint."""
        status = self.read_status()
        self.write_status(**{**status, "status": "FAILED", "message": message, "crashed": True})
        return RunResult(name, "FAILED", status.get("run_id"), self.path, message, crashed=True)


class StatusSink(Sink):
    """``status.json``: the run's status as it changes (RUNNING at the start, the outcome at the end),
    with the process and host that ran it."""

    def __init__(self, folder: RunFolder, run_id: str | None):
        self.folder, self.run_id = folder, run_id

    def status(self, status: str, message: str = "", **details: Any) -> None:
        self.folder.write_status(status=status, run_id=self.run_id, message=message, pid=os.getpid(),
                                 host=socket.gethostname(), **details)
