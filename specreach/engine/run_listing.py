"""Recorded runs read back from their folders: the table ``specreach runs`` prints, and the tidy
table of every metric row that ``specreach export`` writes.

Runs are found under any folder: a run's own folder, a spec's output folder, or a folder holding
several (the ``output`` of many specs). A run folder is one with a ``status.json`` or a ``run.json``
(:class:`~specreach.engine.run_folder.RunFolder` names the files); MLflow's artifact copies of a
table are not run folders. A file that cannot be read (or holds a value of the wrong type) makes
that run's status ``DAMAGED`` with the reason, and the other runs are still listed; a last table
line cut short by a killed run is left out, and said so.

``export`` never writes into what it reads: not into a run's folder, nor over a file a spec's output
records (its spec.yaml, its MLflow store, …).
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from specreach.engine.metrics_table import read_whole_rows
from specreach.engine.run_folder import DamagedFile, RunFolder

#: What every run contributes to the export besides its metrics, from its run.json.
METADATA = ("spec", "run", "status", "phase", "architecture", "size", "seed", "parameterization", "data",
            "parameters", "trainable_parameters")
#: The types of the values listing reads from run.json and status.json (when present).
DESCRIPTION_TYPES: dict[str, Any] = {"name": str, "specreach.spec": str, "sweep": dict, "steps": int}
STATUS_TYPES: dict[str, Any] = {"status": str, "message": str, "pid": int, "host": str,
                                "wall_seconds": (int, float), "started_at": (int, float)}
#: Files of a spec's output folder (beside runs/) that export must not overwrite.
SPEC_RECORDS = ("spec.yaml", "engine.json", "sync.json", "mlflow.db", "mlflow.db.lock", ".lock")


@dataclass
class RecordedRun:
    folder: RunFolder
    description: dict[str, Any] = field(default_factory=dict)  # run.json
    state: dict[str, Any] = field(default_factory=dict)  # status.json
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv
    problem: str | None = None  # why a file could not be read
    cut_line: bool = False  # metrics.csv ends in a line cut short (left out of rows)

    @property
    def name(self) -> str:
        return str(self.description.get("name") or self.folder.path.name)

    @property
    def spec(self) -> str:
        spec = self.description.get("specreach.spec")
        return str(spec) if spec else self.folder.path.parent.parent.name

    @property
    def sweep(self) -> dict[str, Any]:
        return dict(self.description.get("sweep") or {})

    @property
    def status(self) -> str:
        if self.problem is not None:
            return "DAMAGED"
        status = str(self.state.get("status") or ("NOT STARTED" if not self.rows else "UNKNOWN"))
        if status == "RUNNING" and not _alive(self.state):
            return "DIED"  # killed without a word: `specreach run --resume` continues it
        return status

    @property
    def steps(self) -> int | None:
        steps = self.description.get("steps")
        return int(steps) if isinstance(steps, (int, float)) else None

    @property
    def steps_done(self) -> int:
        """Training steps recorded (rows with a training loss)."""
        trained = [row["step"] for row in self.rows if _finite(row.get("loss")) and isinstance(row.get("step"), int)]
        return max(trained) + 1 if trained else 0

    def last(self, key: str) -> float:
        """The last finite value of a metric (NaN when there is none)."""
        for row in reversed(self.rows):
            if _finite(row.get(key)):
                return float(row[key])
        return math.nan

    @property
    def wall_seconds(self) -> float:
        """Seconds the run has run, every attempt together (NaN when not recorded)."""
        recorded = self.state.get("wall_seconds")
        if not isinstance(recorded, (int, float)):
            return math.nan
        if self.status == "RUNNING" and isinstance(self.state.get("started_at"), (int, float)):
            # A running attempt's status.json was written as it started: add the time since.
            return float(recorded) + time.time() - float(self.state["started_at"])
        return float(recorded)

    def metadata(self) -> dict[str, Any]:
        found: dict[str, Any] = {"spec": self.spec, "run": self.name, "status": self.status}
        for key in METADATA[3:]:
            found[key] = self.description.get(key)
        return found


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _alive(state: dict[str, Any]) -> bool:
    """Whether the process that wrote a RUNNING status still runs (assumed so on another host)."""
    pid = state.get("pid")
    if state.get("host") != socket.gethostname() or not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_run_folder(path: Path) -> bool:
    folder = RunFolder(path)
    return folder.status_file.is_file() or folder.description.is_file()


def find_run_folders(paths: Iterable[str | Path]) -> list[RunFolder]:
    """The run folders under each path (a run's folder, a spec's output folder, or any folder above)."""
    found: dict[Path, RunFolder] = {}
    folders = [Path(p) for p in paths]
    for path in folders:
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such folder; give a spec's output folder (printed at the end of "
                                    "`specreach run`), one of its runs, or a folder holding several")
        if is_run_folder(path):
            found.setdefault(path.resolve(), RunFolder(path))
            continue
        markers = {RunFolder(path).status_file.name, RunFolder(path).description.name}
        for directory, subdirectories, files in os.walk(path):
            subdirectories.sort()
            if markers & set(files):
                found.setdefault(Path(directory).resolve(), RunFolder(directory))
                subdirectories.clear()  # a run folder holds no runs
    if not found:
        raise FileNotFoundError(f"no runs under {', '.join(map(str, folders))}: a run's folder holds status.json "
                                "or run.json")
    return list(found.values())


def read_run(folder: RunFolder) -> RecordedRun:
    run = RecordedRun(folder)
    try:
        if folder.description.is_file():
            run.description = _typed_record(folder.description, folder.read_description(), DESCRIPTION_TYPES,
                                            folder.remedy)
        if folder.status_file.is_file():
            run.state = _typed_record(folder.status_file, folder.read_status(), STATUS_TYPES, folder.remedy)
        if folder.metrics.is_file():
            run.rows, run.cut_line = read_whole_rows(folder.metrics)
    except (ValueError, OSError) as error:  # a damaged file: say which, and go on with the other runs
        run.problem = str(error)
    return run


def _typed_record(path: Path, record: dict[str, Any], types: dict[str, Any], remedy: str) -> dict[str, Any]:
    """``record`` if each value listing reads has its type (a bool is no number); else DamagedFile."""
    for key, expected in types.items():
        value = record.get(key)
        if value is not None and (not isinstance(value, expected) or (isinstance(value, bool) and expected is not
                                                                         bool)):
            kinds = expected if isinstance(expected, tuple) else (expected,)
            wanted = " or ".join({dict: "a mapping", str: "text", int: "a whole number", float: "a number"}[k]
                                 for k in kinds)
            raise DamagedFile(path, f"'{key}' holds {type(value).__name__} {str(value)[:40]!r}, not {wanted} "
                                    "(damaged or edited)", remedy)
    return record


def read_runs(paths: Iterable[str | Path]) -> list[RecordedRun]:
    """Every run under ``paths``, by spec and name (``seed10`` after ``seed9``)."""
    runs = [read_run(folder) for folder in find_run_folders(paths)]
    return sorted(runs, key=lambda run: (run.spec, _natural(run.name)))


def _natural(name: str) -> list[Any]:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


# --- the two tables -------------------------------------------------------------------------------

def sweep_columns(runs: Sequence[RecordedRun]) -> list[str]:
    return list(dict.fromkeys(key for run in runs for key in run.sweep))


def summary_frame(runs: Sequence[RecordedRun]):
    """One row per run: status, steps, final training loss, final evaluation loss, final P, the sweep
    values and the wall time."""
    import pandas as pd

    keys = sweep_columns(runs)
    records = []
    for run in runs:
        records.append({
            "spec": run.spec, "run": run.name, "status": run.status, "steps_done": run.steps_done,
            "steps": run.steps, "loss": run.last("loss"), "eval_loss": run.last("eval_loss"),
            "spectral_position": run.last("spectral_position"),
            **{f"sweep.{key}": run.sweep.get(key) for key in keys},
            "wall_seconds": run.wall_seconds, "message": run.problem or str(run.state.get("message") or ""),
            "folder": str(run.folder.path),
        })
    return _typed(pd.DataFrame.from_records(records))


def metrics_frame(runs: Sequence[RecordedRun]):
    """Every metric row of every run, with the run's metadata and sweep values as columns: one tidy
    table (a row per recorded row, a column per variable)."""
    import pandas as pd

    keys = sweep_columns(runs)
    frames = []
    for run in runs:
        identity = {**run.metadata(), **{f"sweep.{key}": run.sweep.get(key) for key in keys}}
        table = pd.DataFrame.from_records(run.rows) if run.rows else pd.DataFrame({"step": pd.Series(dtype="int64")})
        for column, value in reversed(identity.items()):
            table.insert(0, column, [value] * len(table))
        frames.append(table)
    frame = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame()
    return _typed(frame)


def _typed(frame):
    """Columns of one type each (Parquet needs it): numbers stay numbers, mixed columns become text."""
    import pandas as pd

    for column in frame.columns:
        values = frame[column]
        if values.dtype != object:
            continue
        present = values.dropna()
        if present.map(lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)).all():
            frame[column] = pd.to_numeric(values)
        elif not present.map(lambda v: isinstance(v, str)).all():
            frame[column] = values.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                                       else str(v))
    return frame


def export(runs: Sequence[RecordedRun], path: str | Path, format: str) -> int:
    """Write :func:`metrics_frame` to ``path`` as ``parquet`` or ``csv``; returns the rows written."""
    path = Path(path)
    refuse_recorded_output(path)
    if format not in ("parquet", "csv"):
        raise ValueError(f"export format {format!r}: choose parquet or csv")
    frame = metrics_frame(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return len(frame)


def refuse_recorded_output(path: Path) -> None:
    """Export writes a new file: never into a run's folder, over what a spec's output records, or
    onto a folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"export --output {path}: is a folder; give the file to write, e.g. "
                         f"{path / 'metrics.parquet'}")
    resolved = path.resolve()
    for folder in resolved.parents:
        if is_run_folder(folder):
            raise ValueError(f"export --output {path}: lies in the run folder {folder}, which export never writes "
                             "into (it would replace what the run recorded); give a path outside it")
        if folder.name in ("runs", "mlartifacts") and (folder.parent / "spec.yaml").is_file():
            raise ValueError(f"export --output {path}: lies in {folder}, part of a spec's output; give a path "
                             "outside it")
    if resolved.name in SPEC_RECORDS and (resolved.parent / "spec.yaml").is_file():
        raise ValueError(f"export --output {path}: is a file the spec's output folder records; give another name")


# --- as text --------------------------------------------------------------------------------------

def _number(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _duration(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def format_runs(runs: Sequence[RecordedRun]) -> str:
    """The runs as an aligned text table (the spec column only when there are several specs)."""
    keys = sweep_columns(runs)
    labels = _short_labels(keys)
    several_specs = len({run.spec for run in runs}) > 1
    header = (["spec"] if several_specs else []) + ["run", "status", "steps", "loss", "eval_loss", "P"] \
        + [labels[key] for key in keys] + ["wall"]
    lines = [header]
    for run in runs:
        steps = f"{run.steps_done}/{run.steps}" if run.steps is not None else str(run.steps_done)
        lines.append(([run.spec] if several_specs else []) + [
            run.name, run.status, steps, _number(run.last("loss")), _number(run.last("eval_loss")),
            _number(run.last("spectral_position"), 3),
        ] + [_number(run.sweep.get(key)) for key in keys] + [_duration(run.wall_seconds)])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    numeric = {"steps", "loss", "eval_loss", "P", "wall"} | {labels[key] for key in keys}
    text = []
    for line in lines:
        cells = [str(cell).rjust(width) if header[i] in numeric else str(cell).ljust(width)
                 for i, (cell, width) in enumerate(zip(line, widths))]
        text.append("  ".join(cells).rstrip())
    problems = [f"{run.name}: {run.problem}" for run in runs if run.problem]
    return "\n".join(text + problems)


def _short_labels(keys: Sequence[str]) -> dict[str, str]:
    """``data.params.alpha`` → ``alpha``, unless two swept keys end alike (then the whole key)."""
    last = [key.split(".")[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}
