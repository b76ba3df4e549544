"""The per-run metrics table: a CSV written row by row, so a crash keeps what was recorded.

Rows have different columns (a measured step has the LNP components, an evaluation the
validation loss); the header is the union, rewritten when a new column appears. A process killed
while appending leaves at most a part of its last line: a table opened to be continued drops that
part (the run recomputes it from its checkpoint); any other damage is an error naming the file
and line.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping


class MetricsTable:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            self.rows = read_table(self.path, drop_partial_line=True)
            for row in self.rows:
                self._add_columns(row)

    def _add_columns(self, row: Mapping[str, Any]) -> bool:
        new = [key for key in row if key not in self.columns]
        self.columns.extend(new)
        return bool(new)

    def append(self, row: Mapping[str, Any]) -> None:
        row = dict(row)
        self.rows.append(row)
        if self._add_columns(row) or not self.path.exists():
            self._rewrite()
        else:
            with self.path.open("a", newline="") as handle:
                csv.DictWriter(handle, self.columns).writerow(row)

    def truncate(self, rows: int) -> None:
        """Keep the first ``rows`` rows (a resumed run recomputes the rest)."""
        if rows > len(self.rows):
            raise ValueError(f"{self.path}: holds {len(self.rows)} rows but the run's checkpoint says {rows} were "
                             "recorded: the table was damaged or replaced; rerun the run with --overwrite")
        self.rows = self.rows[:rows]
        self._rewrite()

    def sync(self) -> None:
        """Make the rows written so far durable (before a checkpoint that counts them)."""
        if self.path.exists():
            with self.path.open("a") as handle:
                os.fsync(handle.fileno())

    def _rewrite(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        temporary.replace(self.path)


def _number(text: str) -> Any:
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def read_table(path: Path, drop_partial_line: bool = False) -> list[dict[str, Any]]:
    """The rows of a metrics table. ``drop_partial_line``: a last line cut short by a killed process
    is dropped (with a warning); otherwise it, like any other damage, is an error naming the line."""
    rows, cut = read_whole_rows(path)
    if cut and not drop_partial_line:
        raise ValueError(f"{path}: its last line is cut short (the process writing it was killed?); resuming "
                         "the run repairs it")
    if cut:
        warnings.warn(f"{path}: dropped a last line cut short; the run recomputes it from its checkpoint",
                      stacklevel=2)
    return rows


def read_whole_rows(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The whole rows of a metrics table, and whether a last line cut short (a killed writer) was left
    out; any other damage is an error naming the file and line."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a metrics table (not UTF-8 text: {error.reason})") from None
    cut = bool(text) and not text.endswith("\n")
    if cut:
        text = text[:text.rfind("\n") + 1]
    rows = []
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            if None in row or None in row.values():
                raise ValueError(f"{path}:{reader.line_num}: the line does not match the header (damaged); rerun "
                                 "the run with --overwrite")
            rows.append({key: _number(value) for key, value in row.items()})
    except csv.Error as error:  # e.g. a field over the csv module's size limit
        raise ValueError(f"{path}:{reader.line_num + 1}: not a metrics table line ({error}; damaged); rerun the run "
                         "with --overwrite") from None
    return rows, cut
