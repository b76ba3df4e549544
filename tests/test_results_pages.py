"""Numbers quoted in the docs/results/ pages are the ones in the page's summary.json, to the digits
printed: the tables of every page, and the prose numbers that summary.json holds (numbers read off a
figure are marked so on the page and are not checked here)."""

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


@pytest.mark.parametrize("dataset, spec", [("text", "isocompute-cpu"), ("digits", "isocompute-cifar5m-nextpixel-cpu")])
def test_isocompute_tables_quote_the_summary(dataset, spec):
    budgets = summary("isocompute")["isocompute"][f"{spec} | standard"]
    lines = (RESULTS / "isocompute.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith(f"| {dataset}, budget |"))
    sizes = [cell.split()[0] for cell in lines[header].strip("|").split("|")[1:]]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[header + 2:header + 5]]
    assert len(rows) == len(budgets) == 3
    powers = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")
    for cells, (budget, points) in zip(rows, budgets.items()):
        mantissa, _, power = cells[0].partition("10")
        assert float(mantissa.rstrip("·") or 1) * 10 ** int(power.translate(powers)) == float(budget), cells[0]
        for size, cell in zip(sizes, cells[1:]):
            (point,) = [p for p in points if p["size"] == size]
            found = re.fullmatch(rf"({NUMBER}) / ({NUMBER}) \(([0-9]+)(?:, ({NUMBER})(?: epochs)?)?\)", cell)
            assert found, cell
            loss, position, steps, epochs = found.groups()
            assert agrees(loss, point["final_eval_loss"]["mean"]), (budget, size, cell)
            assert agrees(position, point["last_window_P"]["mean"]), (budget, size, cell)
            assert int(steps) == point["steps"], (budget, size, cell)
            assert (epochs is not None) == (point["epochs"] > 1), (budget, size, cell)
            if epochs:
                assert agrees(epochs, point["epochs"]), (budget, size, cell, point["epochs"])


def test_isocompute_prose_quotes_the_summary():
    points = [(spec, budget, point) for spec, budgets in summary("isocompute")["isocompute"].items()
              for budget, found in budgets.items() for point in found]
    page = (RESULTS / "isocompute.md").read_text()
    smallest = {"isocompute-cpu | standard": "h24", "isocompute-cifar5m-nextpixel-cpu | standard": "h8"}
    larger = [point["steps"] for spec, _, point in points if point["size"] != smallest[spec]]
    assert f"get only {min(larger)}–{max(larger)} steps" in page
    every = [point["steps"] for _, _, point in points]
    assert f"for {min(every)}–{max(every)} steps" in page
    epochs = [point["epochs"] for _, _, point in points if point["epochs"] > 1]
    assert len(epochs) > len(points) / 4 and "up to\n  31 times" in page and agrees("31", max(epochs))


@pytest.mark.parametrize("column, spec, metric", [
    (1, "vit-cifar5m-cpu | standard", "final_eval_loss"), (2, "vit-cifar5m-cpu | standard", "last_window_P"),
    (3, "vit-cifar5m-mup-cpu | mup", "final_eval_loss"), (4, "vit-cifar5m-mup-cpu | mup", "last_window_P"),
])
def test_vit_table_quotes_the_summary(column, spec, metric):
    scaling = summary("vit-cifar5m")["scaling"]
    rows = table_lines(RESULTS / "vit-cifar5m.md", r"h[0-9]+")
    assert len(rows) == 3
    for cells in rows:
        stats = scaling[f"{spec} | {cells[0].split()[0]}"][metric]
        mean, low, high = mean_and_range(cells[column])
        assert agrees(mean, stats["mean"]) and agrees(low, stats["min"]) and agrees(high, stats["max"]), (cells[0], cells[column])


def test_entk_spectrum_table_quotes_the_summary():
    spectra = summary("entk-spectrum")
    recorded = spectra["scaling"]["entk-spectrum-cpu | standard | default"]
    rows = table_lines(RESULTS / "entk-spectrum.md", r"[0-9]")
    assert len(rows) == len(spectra["spectrum"]) == 3
    for cells in rows:
        start, end = (spectra["spectrum"][f"default-seed{cells[0]}"][moment]
                      for moment in ("initialization", "end of training"))
        for column, key in ((1, "P_from_spectrum"), (3, "gradient_median_eigenvalue"), (4, "top_eigenvalue_share")):
            before, after = cells[column].split(" → ")
            assert agrees(before, start[key]) and agrees(after, end[key]), (cells[0], key, cells[column])
        # P read off the spectrum is the P the estimator recorded at those steps.
        for window, moment in (("first_window_P", start), ("last_window_P", end)):
            assert abs(recorded[window]["per_seed"][cells[0]] / moment["P_from_spectrum"] - 1) < 1e-9


def test_hutchinson_convergence_table_quotes_the_summary():
    hutchinson = summary("hutchinson-convergence")["hutchinson"]
    entry = hutchinson["convergence"]["hutchinson-convergence-cpu"]
    page = (RESULTS / "hutchinson-convergence.md").read_text()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in page.splitlines()
            if line.startswith(("| K |", "| CV of", "| ± (", "| the estimator"))]
    assert len(rows) == 4
    for column, probes in enumerate(rows[0][1:], start=1):
        by_k = entry["by_probes"][probes]
        assert agrees(rows[1][column].removesuffix(" %"), 100 * by_k["cv"]), (probes, rows[1][column])
        assert agrees(rows[2][column], 100 * by_k["cv_stderr"]), (probes, rows[2][column])
        reported = by_k["reported_relative_stderr"]
        assert rows[3][column] == "–" if reported is None else agrees(rows[3][column].removesuffix(" %"), 100 * reported)
    assert f"{entry['fit_prefactor']:.3f} · K^−{-entry['fit_exponent']:.2f}" in page
    assert f"{entry['draws']} draws" in page
    for dataset, spec in (("text", "scaling-simplestories-cpu"), ("digits", "scaling-cifar5m-nextpixel-cpu")):
        spreads = [100 * size["median_relative_seed_spread"] for size in hutchinson["seed_agreement"][spec].values()]
        assert f"{min(spreads):.0f}–{max(spreads):.0f} % on the {dataset} runs" in page, (dataset, spreads)


def test_scaling_simplestories_prose_quotes_the_summary():
    scaling = summary("scaling-simplestories")["scaling"]
    page = " ".join((RESULTS / "scaling-simplestories.md").read_text().split())
    by_size = {key.split()[-1]: entry for key, entry in scaling.items()}

    def product(entry: dict, window: str, seed: str = "") -> float:
        values = [entry[f"{window}_window_P"]["per_seed"][s] * entry[f"{window}_window_N_normalized"]["per_seed"][s]
                  for s in ([seed] if seed else entry[f"{window}_window_P"]["per_seed"])]
        return sum(values) / len(values)

    for size, (before, after) in {"h64": ("3.7", "0.43"), "h128": ("16", "0.47"), "h32": ("0.87", "0.74")}.items():
        assert f"{before} → {after}" in page
        assert agrees(before, product(by_size[size], "first")) and agrees(after, product(by_size[size], "last")), size
    rises = [s for s in by_size["h32"]["first_window_P"]["per_seed"]
             if product(by_size["h32"], "last", s) > product(by_size["h32"], "first", s)]
    assert len(rises) == 1 and "one seed's rises, 0.80 → 0.98" in page
    assert agrees("0.80", product(by_size["h32"], "first", rises[0]))
    assert agrees("0.98", product(by_size["h32"], "last", rises[0]))
    falls = [entry["first_window_P"]["mean"] / entry["last_window_P"]["mean"] for entry in by_size.values()]
    assert "seed means 30–69× below step 0" in page and agrees("30", min(falls)) and agrees("69", max(falls))
    single = [entry["first_window_P"]["per_seed"][s] / entry["last_window_P"]["per_seed"][s]
              for entry in by_size.values() for s in entry["first_window_P"]["per_seed"]]
    assert "single seeds 19–72×" in page and agrees("19", min(single)) and agrees("72", max(single))
    growth = [entry["last_window_N_normalized"]["mean"] / entry["first_window_N_normalized"]["mean"]
              for entry in by_size.values()]
    assert "ending 2–26× above its start" in page and agrees("2", min(growth)) and agrees("26", max(growth))
    last = {size: entry["last_window_P"] for size, entry in by_size.items()}
    assert all(last["h32"]["min"] <= last[other]["mean"] <= last["h32"]["max"] for other in ("h64", "h128"))
    assert not last["h64"]["min"] <= last["h32"]["mean"] <= last["h64"]["max"]
    exponent = summary("scaling-simplestories")["final_loss_power_law"]["scaling-simplestories-cpu | standard"]["exponent"]
    assert "has exponent 0.008" in page and agrees("0.008", exponent)
