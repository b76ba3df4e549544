"""The hyper-parameter table of docs/reproducing.md and the paper specs agree, both ways: every
row's value is what the spec loads to, and every setting of every paper spec has a row."""

import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from specreach import Engine, load_spec
from specreach.models.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
TABLE_HEADING = "## Every hyper-parameter of the paper specs"
PAPER_SPECS = ["rfm-validation", "scaling-simplestories", "scaling-cifar5m-nextpixel", "linear-probes",
               "linear-probes-cifar5m-nextpixel", "vit-cifar5m", "vit-cifar5m-mup", "entk-spectrum", "isocompute",
               "isocompute-cifar5m-nextpixel", "hutchinson-convergence"]
# Where the run goes and how it is stored, not what it measures.
NOT_HYPERPARAMETERS = {"name", "output", "train.device", "train.checkpoint_every", "data.params.directory",
                       "measure.options.max_memory_gb"}
WHOLE = {"measure.schedule", "train.seed_params"}  # one row each, not one per sub-key
# Defaults that shape a training run, so they need a row even where the spec file leaves them out.
TRAINING_DEFAULTS = {"train.lr", "train.betas", "train.eps", "train.weight_decay", "train.warmup_steps",
                     "train.grad_clip", "train.precision", "train.data_seed", "train.seeds", "train.batch_size"}


def parse_value(text: str):
    found = re.fullmatch(r"range\((\d+), (\d+)(?:, (\d+))?\)", text)
    if found:
        return list(range(*(int(part) for part in found.groups() if part is not None)))
    return yaml.safe_load(text)


def table_rows(markdown: str) -> list[dict]:
    """(specs, setting, value, source) of every row under the table's heading."""
    lines = markdown.split(TABLE_HEADING, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| specs |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        specs, setting, value, source = (cell.strip() for cell in line.strip().strip("|").split("|"))
        preset = setting.startswith("preset ")
        rows.append({"specs": re.findall(r"`([^`]+)`", specs), "setting": setting.strip("`") if not preset else
                     "preset " + setting.split("`")[1], "value": parse_value(value.strip("`")), "source": source,
                     "line": line})
    return rows


@cache
def spec(name, overrides=()):
    return load_spec(ROOT / "specs" / f"{name}.yaml", list(overrides))


def resolved(loaded, setting: str):
    """What the loaded spec sets for a row's setting (learning rates: per size, from the presets)."""
    if setting == "train.lr":
        rates = {run.size: run.train.lr for run in Engine(loaded).runs()}
        values = list(rates.values())
        return values[0] if len(set(values)) == 1 else values
    if setting.startswith("preset "):
        name = setting.split(" ", 1)[1]
        assert name in loaded.model.presets, f"{loaded.name} has no preset {name}"
        return get_preset(name).params
    if setting.startswith("sweep."):
        return loaded.sweep[setting.removeprefix("sweep.")]
    value = loaded.model_dump(mode="json")
    for part in setting.split("."):
        value = value[part]
    return value


def agrees(table_value, spec_value, setting: str) -> bool:
    if setting.startswith("preset "):  # the architecture's sizes; the preset also holds vocabulary etc.
        return {key: spec_value.get(key) for key in table_value} == table_value
    return yaml.safe_load(yaml.safe_dump(spec_value)) == table_value  # tuples as lists, as YAML reads them


def mismatches(rows, load=spec) -> list[str]:
    found = []
    for row in rows:
        for name in row["specs"]:
            value = resolved(load(name), row["setting"])
            if not agrees(row["value"], value, row["setting"]):
                found.append(f"{name}: {row['setting']} is {value!r} in the spec, {row['value']!r} in the table")
    return found


def settings_of(name: str) -> set[str]:
    """The settings a paper spec's file gives, plus the training defaults it relies on."""
    def flat(tree, prefix=""):
        for key, value in tree.items():
            dotted = prefix + key
            if dotted == "sweep":
                yield from (f"sweep.{swept}" for swept in value)
            elif isinstance(value, dict) and value and dotted not in WHOLE:
                yield from flat(value, dotted + ".")
            else:
                yield dotted

    raw = yaml.safe_load((ROOT / "specs" / f"{name}.yaml").read_text())
    settings = set(flat(raw)) - NOT_HYPERPARAMETERS
    settings |= {"train.lr"} if name == "rfm-validation" else TRAINING_DEFAULTS
    if spec(name).measure.estimator == "hutchinson" and "measure.options.readout" not in settings:
        settings.add("measure.options")  # the readout: exact (the default) or the paper's probed
    if "model.presets" in settings:
        settings |= {f"preset {preset}" for preset in spec(name).model.presets}
    return settings


@pytest.fixture(scope="module")
def rows():
    return table_rows((ROOT / "docs" / "reproducing.md").read_text())


def test_every_row_has_a_source_and_names_paper_specs(rows):
    assert len(rows) > 50
    for row in rows:
        assert row["specs"] and set(row["specs"]) <= set(PAPER_SPECS), row["line"]
        assert row["source"], row["line"]


def test_the_table_holds_what_the_specs_load_to(rows):
    assert mismatches(rows) == []


def test_every_setting_of_every_paper_spec_has_a_row(rows):
    presets_with_a_row = {row["setting"] for row in rows if row["setting"].startswith("preset ")}
    for name in PAPER_SPECS:
        covered = {row["setting"] for row in rows if name in row["specs"]} | presets_with_a_row
        missing = {setting for setting in settings_of(name)
                   if not any(c == setting or c.startswith(setting + ".") for c in covered)}
        assert not missing, f"{name}: no row for {sorted(missing)}"
    duplicates = [(name, row["setting"]) for row in rows for name in row["specs"]]
    assert len(duplicates) == len(set(duplicates))  # one row per spec and setting


@pytest.mark.parametrize("override", ["train.warmup_steps=50", "measure.probes=4", "train.betas=[0.9,0.999]"])
def test_a_changed_spec_value_is_caught(rows, override):
    changed = lambda name: spec(name, (override,)) if name == "scaling-simplestories" else spec(name)  # noqa: E731
    assert any(line.startswith("scaling-simplestories:") for line in mismatches(rows, changed))


def test_the_deviating_row_of_table_1_is_marked(rows):
    (row,) = [row for row in rows if row["setting"] == "preset llama-simplestories-3.8m"]
    assert "deviation" in row["source"] and "196" in row["source"] and "768" in row["source"]
    assert row["value"]["hidden"] % row["value"]["heads"] == 0
