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


def summary(name: str) -> dict:
    return json.loads((RESULTS / name / "summary.json").read_text())


def mean_and_range(cell: str) -> tuple[str, str, str]:
    """'0.24 [0.17–0.36]' or '1.3e-3 [2.7e-4–2.6e-3]' → mean, low, high."""
    found = re.fullmatch(rf"({NUMBER}) \[({NUMBER})–({NUMBER})\]", cell.strip())
    assert found, cell
    return found.group(1), found.group(2), found.group(3)


def test_linear_probe_table_quotes_the_summary():
    probes = summary("linear-probes")["probes"]
    rows = table_lines(RESULTS / "linear-probes.md", r"(?:text|digits), h[0-9]+")
    assert len(rows) == len(probes) == 6
    for cells in rows:
        dataset, size = cells[0].split()[0].rstrip(","), cells[0].split()[1]
        spec = "linear-probes-cpu" if dataset == "text" else "linear-probes-cifar5m-nextpixel-cpu"
        entry = probes[f"{spec} | standard | {size}"]
        ratio, tau = entry["P_ratio_trained_over_random"], entry["tau"]
        assert len(ratio) == entry["windows"] == 18 and tau[11] <= 0.082 and tau[-5] >= 0.15
        early, _, then = cells[1].partition(", then ")
        first = ratio[:11] if then else ratio[:12]
        low, high = early.split("–")
        assert agrees(low, min(first)) and agrees(high, max(first)), (cells[0], early, min(first), max(first))
        if then:
            assert agrees(then, ratio[11]), (cells[0], then, ratio[11])
        low, high = cells[2].split("–")
        assert agrees(low, min(ratio[-5:])) and agrees(high, max(ratio[-5:])), (cells[0], cells[2])
        half = entry["ratio_second_half"]
        mean, low, high = mean_and_range(cells[3])
        assert agrees(mean, half["mean"]) and agrees(low, half["min"]) and agrees(high, half["max"]), (cells[0], cells[3])
        magnitude = entry["N_normalized"]
        growth = magnitude["train"]["last"]["mean"] / magnitude["train"]["first"]["mean"]
        if cells[4].startswith("×"):
            assert agrees(cells[4][1:], growth), (cells[0], cells[4], growth)
        else:
            assert agrees(cells[4].removeprefix("−").removesuffix(" %"), 100 * (1 - growth)), (cells[0], cells[4])
        # 'within x %': the larger change of the two probes' seed means, rounded up.
        drift = max(abs(magnitude[kind]["last"]["mean"] / magnitude[kind]["first"]["mean"] - 1)
                    for kind in ("probe-trained", "probe-random"))
        bound = float(cells[5].removeprefix("within ").removesuffix(" %")) / 100
        assert bound - 0.001 < drift <= bound, (cells[0], cells[5], drift)


def test_linear_probe_prose_quotes_the_summary():
    probes = summary("linear-probes")["probes"]
    page = (RESULTS / "linear-probes.md").read_text()
    digits_h64 = probes["linear-probes-cifar5m-nextpixel-cpu | standard | h64"]
    assert "below 1 in 15 of 18 windows" in page and digits_h64["windows_below_1"] == 15
    changes = [abs(entry["N_normalized"][kind]["last"]["per_seed"][seed] / first - 1)
               for entry in probes.values() for kind in ("probe-trained", "probe-random")
               for seed, first in entry["N_normalized"][kind]["first"]["per_seed"].items()]
    assert "a single seed by under 3 %" in page and 0.02 < max(changes) < 0.03
    train = digits_h64["N_normalized"]["train"]
    growth = [train["last"]["per_seed"][seed] / first for seed, first in train["first"]["per_seed"].items()]
    assert "one of its three seeds ends above its start" in page and sum(g > 1 for g in growth) == 1
