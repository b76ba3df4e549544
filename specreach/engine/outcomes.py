"""What ``specreach run`` prints when the runs are over: one line per run for a small sweep, a
table of outcomes by size for a large one (a 180-run sweep should not end with 180 lines), and
always the runs that failed, each with its message."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from specreach.engine.runs import RunResult

#: Sweeps with more runs than this are summarised in a table.
LINES_UP_TO = 12
#: Failed runs listed by name under the table; `specreach runs DIR` lists them all.
FAILURES_SHOWN = 10

SKIPPED = "skipped (already finished)"


def outcome(result: RunResult) -> str:
    """FINISHED, FAILED, KILLED, or SKIPPED for a run that had finished before and did not run again."""
    return "SKIPPED" if result.skipped else result.status


def outcome_lines(results: Sequence[RunResult], sizes: dict[str, str], root: object) -> list[str]:
    """The closing report of an execution. ``sizes``: run name → its model size (the table's rows)."""
    if not results:
        return ["no runs"]
    if all(result.skipped for result in results):
        lines = [f"nothing to run: all {len(results)} runs had finished before; rerun with --overwrite to run "
                 "them again"] if len(results) > 1 else []
        if len(results) <= LINES_UP_TO:
            lines += _run_lines(results)
        return lines
    if len(results) <= LINES_UP_TO:
        return _run_lines(results)
    return _table(results, sizes) + _failures(results, root)


def _run_lines(results: Sequence[RunResult]) -> list[str]:
    width = max(len(result.name) for result in results)
    return [f"{result.name:<{width}}  {result.status:<8}  {SKIPPED if result.skipped else result.message}".rstrip()
            for result in results]


def _table(results: Sequence[RunResult], sizes: dict[str, str]) -> list[str]:
    columns = [name for name in ("FINISHED", "SKIPPED", "FAILED", "KILLED")
               if any(outcome(result) == name for result in results)]
    counts: dict[str, Counter] = {}
    for result in results:
        counts.setdefault(sizes.get(result.name, "?"), Counter())[outcome(result)] += 1
    total = Counter(outcome(result) for result in results)
    said = ", ".join(f"{total[name]} {SKIPPED if name == 'SKIPPED' else name.lower()}" for name in columns)
    width = max(len("size"), *(len(size) for size in counts))
    header = f"  {'size':<{width}}" + "".join(f"  {name.lower():>8}" for name in columns)
    rows = [f"  {size:<{width}}" + "".join(f"  {count[name]:>8}" for name in columns) for size, count in counts.items()]
    return [f"{len(results)} runs: {said}", header, *rows]


def _failures(results: Sequence[RunResult], root: object) -> list[str]:
    failed = [result for result in results if result.status != "FINISHED"]
    if not failed:
        return []
    lines = ["not finished:"] + [f"  {result.name}  {result.status}  {result.message}".rstrip()
                                 for result in failed[:FAILURES_SHOWN]]
    if len(failed) > FAILURES_SHOWN:
        lines.append(f"  … and {len(failed) - FAILURES_SHOWN} more: `specreach runs {root}` lists every run")
    return lines
