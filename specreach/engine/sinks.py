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

Sinks are a plugin kind (``register_sinks``): a spec names the ones its runs record to in
``tracking.sinks`` (default ``[mlflow]``; ``tensorboard`` ships too,
:mod:`specreach.engine.tensorboard_sink`). A registered sink is constructed per run as
``Sink(run: RunStart, **params)``, its ``params`` validated by its ``Params``. The metrics table
and status.json are always written; MLflow is opened by the run session itself, which continues
the MLflow run of a resumed run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping

from pydantic import BaseModel, ConfigDict

from specreach.engine.metrics_table import MetricsTable


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class RunStart:
    """What a registered sink is told about the run it records."""

    name: str  # the run's name, unique within its spec ("small-seed0")
    spec_name: str
    folder: Path  # the run folder: a sink may keep its files under it
    tags: Mapping[str, str]  # architecture, size, seed, parameterization, sweep values, ...
    config: Mapping[str, str]  # the run spec, flattened: {"train.lr": "0.001", ...}


def finite_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The row's finite numbers but its step: what a metrics store takes."""
    return {key: float(value) for key, value in row.items()
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)}


class Sink:
    """Receives what one run records. Every method does nothing unless a sink keeps that kind.

    A registered sink sets ``name`` (what ``tracking.sinks`` calls it) and ``Params`` (its options),
    and takes ``(run: RunStart, **params)``; its ``key`` names its part of a checkpoint (its name)."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
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

    def flush(self):
        self.table.sync()

    def state_dict(self):
        return {"rows": len(self.table.rows)}

    def load_state_dict(self, state):
        self.table.truncate(state.get("rows", 0))  # rows written after the checkpoint are recomputed


class MlflowSink(Sink):
    """One MLflow run: finite numbers as metrics at their step, artifacts, and the final status.

    Rows are buffered and sent when flushed (at checkpoints and at the end), whole rows per
    request, each request with ``specreach.rows``: how many rows of the run's table MLflow then
    holds. A request is one transaction, so that count is exact even when a process dies in the
    middle of a flush, and a resumed run (:meth:`catch_up`) sends each row exactly once.
    """

    name = "mlflow"
    key = "mlflow"
    ROWS = "specreach.rows"
    MAX_BATCH = 1000  # MLflow's limit of metrics per request

    def __init__(self, tracker):
        self.tracker = tracker
        self.rows = 0  # rows written so far, in the table's numbering
        self.held = 0  # rows MLflow holds: [0, held)
        self._pending: list[list] = []  # the metrics of each row not sent yet

    @classmethod
    def start(cls, uri: str, experiment: str = "specreach", run_name: str = "monitor", **options: Any) -> "MlflowSink":
        """A sink on a new MLflow run (``options``: see :meth:`specreach.tracking.Tracker.start`)."""
        from specreach.tracking import Tracker

        return cls(Tracker.start(uri, experiment, run_name, **options))

    @property
    def run_id(self) -> str | None:
        return self.tracker.run_id

    def write(self, row):
        index, self.rows = self.rows, self.rows + 1
        if index >= self.held and self.tracker.active:  # a row MLflow holds from an earlier attempt is not sent again
            self._pending.append(self._metrics(row))

    def _metrics(self, row) -> list:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        return [Metric(key, value, timestamp, int(row["step"])) for key, value in finite_metrics(row).items()]

    def catch_up(self, table_rows: list[Mapping[str, Any]]) -> None:
        """A resumed run: its table holds ``table_rows``; send what MLflow lacks of them and skip,
        when they are recorded again, the rows MLflow got after them."""
        self.held = int(self.tracker.metric_value(self.ROWS) or 0)
        self.rows = len(table_rows)
        self._pending = [self._metrics(row) for row in table_rows[self.held:]] if self.tracker.active else []

    def flush(self):
        from mlflow.entities import Metric

        batch: list = []
        sent = 0
        for count, metrics in enumerate(self._pending, start=1):
            batch.extend(metrics)
            last = count == len(self._pending)
            if last or len(batch) + len(self._pending[count]) >= self.MAX_BATCH:
                held = self.held + count
                batch.append(Metric(self.ROWS, float(held), int(time.time() * 1000), held))
                self.tracker.log_batch(batch)
                if not self.tracker.active:  # it failed: MLflow holds what was sent before
                    break
                sent, batch = count, []
        self.held += sent
        self._pending = []

    def drop_pending(self) -> None:
        """Forget rows not sent yet (a hard stop: the resumed run sends them)."""
        self._pending = []

    @property
    def failure(self) -> str | None:
        return self.tracker.failure

    @property
    def complete(self) -> bool:
        """Whether MLflow got everything this sink was given (or tracking is off)."""
        return self.tracker.failure is None

    def record(self) -> dict[str, Any]:
        """What MLflow holds of this run, for its status file (``specreach sync`` reads it)."""
        return {"uri": self.tracker.uri, "run_id": self.tracker.run_id, "rows": self.held,
                "complete": self.complete, **({"failure": self.failure} if self.failure else {})}

    def artifact(self, path, folder=None):
        self.tracker.log_artifact(path, folder)

    def status(self, status, message="", **details):
        if status != "RUNNING":
            self.flush()
            self.tracker.finish(status, message or None)
