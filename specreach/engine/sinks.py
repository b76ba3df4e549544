"""Where a run's records go: one :class:`Sink` interface, and the sinks the engine uses.

A run records three kinds of things, and every one of them goes through a sink:

- rows of metrics (``write``): each training step's loss, the measured components, evaluations;
- artifacts (``artifact``): files such as the metrics table and the spectra;
- its status (``status``): RUNNING when it starts, FINISHED, FAILED or KILLED at the end.

``flush`` comes before every checkpoint: what a sink has been given must then be durable, and
nothing given after it may have left the sink, so that a run resumed from that checkpoint
records the rest exactly once. ``state_dict``/``load_state_dict`` carry a sink's position
through the checkpoint.

Sinks here: :class:`TableSink` (the CSV metrics table), :class:`MlflowSink` (one MLflow run),
:class:`Sinks` (several at once); ``specreach.engine.run_folder.StatusSink`` writes status.json.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from specreach.engine.metrics_table import MetricsTable


class Sink:
    """Receives what one run records. Every method does nothing unless a sink keeps that kind."""

    key = "sink"  # names the sink's part of a checkpoint

    def write(self, row: Mapping[str, Any]) -> None:
        """One row of metrics; ``row["step"]`` is the step it belongs to."""

    def artifact(self, path: Path, folder: str | None = None) -> None:
        """A file or folder the run produced."""

    def flush(self) -> None:
        """Make everything written so far durable (called before each checkpoint)."""

    def status(self, status: str, message: str = "", **details: Any) -> None:
        """RUNNING at the start; FINISHED, FAILED or KILLED at the end (with a message)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Go back to the position recorded by :meth:`state_dict` (a resumed run)."""


class Sinks(Sink):
    """Several sinks as one, called in order."""

    def __init__(self, sinks: Iterable[Sink]):
        self.sinks = list(sinks)

    def write(self, row):
        for sink in self.sinks:
            sink.write(row)

    def artifact(self, path, folder=None):
        for sink in self.sinks:
            sink.artifact(path, folder)

    def flush(self):
        for sink in self.sinks:
            sink.flush()

    def status(self, status, message="", **details):
        for sink in self.sinks:
            sink.status(status, message, **details)

    def state_dict(self):
        return {sink.key: sink.state_dict() for sink in self.sinks if sink.state_dict()}

    def load_state_dict(self, state):
        for sink in self.sinks:
            sink.load_state_dict(state.get(sink.key, {}))


def as_sink(sink: Sink | Iterable[Sink] | None) -> Sink:
    if sink is None:
        return Sink()
    return sink if isinstance(sink, Sink) else Sinks(sink)


class TableSink(Sink):
    """The metrics table (``metrics.csv``), written row by row so that a crash keeps what was recorded."""

    key = "table"

    def __init__(self, path: str | Path):
        self.table = MetricsTable(Path(path))

    def write(self, row):
        self.table.append(row)

    def state_dict(self):
        return {"rows": len(self.table.rows)}

    def load_state_dict(self, state):
        self.table.truncate(state.get("rows", 0))  # rows written after the checkpoint are recomputed


class MlflowSink(Sink):
    """One MLflow run: finite numbers as metrics at their step, artifacts, and the final status.

    Metrics are buffered and sent when flushed, that is at checkpoints and at the end: a run
    resumed from a checkpoint never sends a value twice.
    """

    key = "mlflow"

    def __init__(self, tracker):
        self.tracker = tracker

    @classmethod
    def start(cls, uri: str, experiment: str = "specreach", run_name: str = "monitor", **options: Any) -> "MlflowSink":
        """A sink on a new MLflow run (``options``: see :meth:`specreach.tracking.Tracker.start`)."""
        from specreach.tracking import Tracker

        return cls(Tracker.start(uri, experiment, run_name, **options))

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id

    def write(self, row):
        metrics = {key: value for key, value in row.items()
                   if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)}
        self.tracker.log_metrics(row["step"], metrics)

    def artifact(self, path, folder=None):
        self.tracker.log_artifact(path, folder)

    def flush(self):
        self.tracker.flush()

    def status(self, status, message="", **details):
        if status != "RUNNING":
            self.tracker.finish(status, message or None)
