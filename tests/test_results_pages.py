"""Numbers quoted in the tables of docs/results/ pages are the ones in the page's summary.json, to
the digits printed (the scaling tables and the random-feature tables)."""

import json
import re
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
NUMBER = r"[0-9.]+(?:e-?[0-9]+)?"


def agrees(printed: str, value: float, exponent: str = "") -> bool:
    """``printed`` is ``value`` rounded to its last digit (``exponent``: a shared 'e-3' of a range)."""
    mantissa, _, own = printed.partition("e")
    power = int(own or exponent or 0)
    decimals = len(mantissa.partition(".")[2])
    return abs(float(mantissa) * 10.0**power - value) <= 0.5 * 10.0 ** (power - decimals) * (1 + 1e-9)


def spread(cell: str) -> tuple[str, str, str, str]:
    """'5.9e-3 [5.0–7.3e-3]' → mean, low, high and the range's exponent."""
    found = re.fullmatch(rf"({NUMBER}) \[([0-9.]+)–([0-9.]+)(?:e(-?[0-9]+))?\]", cell.strip())
    assert found, cell
    return found.group(1), found.group(2), found.group(3), found.group(4) or ""


def table_lines(page: Path, first_cell: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in page.read_text().splitlines() if re.match(rf"\| {first_cell} ", line)]


@pytest.mark.parametrize("name", ["scaling-simplestories", "scaling-cifar5m-nextpixel"])
def test_scaling_tables_quote_the_summary(name):
    summary = json.loads((RESULTS / name / "summary.json").read_text())["scaling"]
    rows = table_lines(RESULTS / f"{name}.md", r"h[0-9]+")
    assert len(rows) == 3
    for cells in rows:
        size = cells[0].split()[0]
        (entry,) = [v for k, v in summary.items() if k.endswith(f"| {size}")]
        for cell, metric in ((cells[1], "first_window_P"), (cells[2], "last_window_P"), (cells[4], "final_eval_loss")):
            mean, low, high, exponent = spread(cell)
            stats = entry[metric]
            assert agrees(mean, stats["mean"]), (name, size, metric, cell, stats["mean"])
            assert agrees(low, stats["min"], exponent) and agrees(high, stats["max"], exponent), (name, size, cell)


@pytest.mark.parametrize("folder, columns", [
    ("rfm-validation", {3: "P", 4: "P_theory_arccos", 5: "P_relation_finite_D", 6: "P_asymptote_infinite_D"}),
    ("rfm-validation/n1000", {2: "P", 3: "P_theory_arccos", 5: "P_relation_finite_D"}),
])
def test_random_feature_tables_quote_the_summary(folder, columns):
    (by_alpha,) = json.loads((RESULTS / folder / "summary.json").read_text())["rfm"].values()
    page = (RESULTS / "rfm-validation.md").read_text()
    # The page holds one table per folder: the first for the CPU run, the second after its heading.
    part = page.split("### A larger check")[1 if "n1000" in folder else 0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in part.splitlines()
            if re.match(r"\| [0-9.]+ \|", line)]
    assert len(rows) == len(by_alpha) == 6
    for cells in rows:
        entry = by_alpha[str(float(cells[0])).removesuffix(".0")]
        for column, key in columns.items():
            value = entry[key][0] if isinstance(entry[key], list) else entry[key]
            assert agrees(cells[column].split(" ± ")[0], value), (folder, cells[0], key, cells[column], value)
            if " ± " in cells[column]:
                assert agrees(cells[column].split(" ± ")[1], entry[key][1]), (folder, cells[0], key)
        ratio = entry["P"][0] / entry["P_relation_finite_D"]
        assert agrees(cells[-1], ratio), (folder, cells[0], cells[-1], ratio)
