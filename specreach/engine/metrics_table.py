"""The per-run metrics table: a CSV written row by row, so a crash keeps what was recorded.

Rows have different columns (a measured step has the LNP components, an evaluation the
validation loss); the header is the union, rewritten when a new column appears.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping


class MetricsTable:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.columns: list[str] = []
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            self.rows = read_table(self.path)
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
        self.rows = self.rows[:rows]
        self._rewrite()

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


def read_table(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(newline="") as handle:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]
