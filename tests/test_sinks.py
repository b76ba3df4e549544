"""Sinks as a plugin kind: `tracking.sinks` picks them, the TensorBoard sink ships and is read back,
a plugin's sink is opened per run, and resuming never records a row twice in any sink."""

import math
import types

import pytest

from engine_helpers import TINY_SPEC, cli, tensorboard_scalars, write_spec
from specreach import Engine, load_spec
from specreach.engine.metrics_table import read_table
from specreach.engine.sinks import RunStart, Sink
from specreach.engine.tensorboard_sink import TensorBoardSink
from specreach.plugins import get_plugin_manager, hookimpl

ONE_SIZE = {**TINY_SPEC, "model": {**TINY_SPEC["model"], "sizes": {"s": {"hidden": 8, "ff": 16}}},
            "measure": {**TINY_SPEC["measure"], "schedule": [0, 5], "verify": False}}


def columns_of(table: list[dict]) -> dict[str, list[tuple[int, float]]]:
    found: dict[str, list[tuple[int, float]]] = {}
    for row in table:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                found.setdefault(key, []).append((int(row["step"]), value))
    return found


def test_tensorboard_holds_every_row_of_the_metrics_table(tmp_path):
    spec = load_spec(write_spec(tmp_path, {**ONE_SIZE, "tracking": {"sinks": ["tensorboard"]}}),
                     [f"output={tmp_path / 'out'}"])
    (result,) = Engine(spec).run()
    assert result.status == "FINISHED" and result.run_id is None  # MLflow was not asked for
    assert not (tmp_path / "out" / "tiny" / "mlflow.db").exists()
    written = tensorboard_scalars(result.output_dir / "tensorboard")
    expected = columns_of(read_table(result.output_dir / "metrics.csv"))
    assert set(written) == set(expected)
    for key, values in expected.items():
        assert [step for step, _ in written[key]] == [step for step, _ in values], key
        assert [value for _, value in written[key]] == pytest.approx([value for _, value in values], rel=1e-6), key


def test_a_resumed_tensorboard_sink_cuts_back_to_its_checkpoint(tmp_path):
    """What was written after the last flush (a process killed before its next checkpoint) is dropped."""
    start = RunStart("s-seed0", "tiny", tmp_path, {}, {})
    first = TensorBoardSink(start)
    first.load_state_dict({})
    for step in range(5):
        first.write({"step": step, "loss": float(step)})
    first.flush()
    checkpoint = first.state_dict()
    for step in range(5, 8):  # recorded, then the process dies: no checkpoint says so
        first.write({"step": step, "loss": float(step)})
    first._writer.flush()
    assert [step for step, _ in tensorboard_scalars(tmp_path / "tensorboard")["loss"]] == list(range(8))

    resumed = TensorBoardSink(start)
    resumed.load_state_dict(checkpoint)
    for step in range(5, 10):
        resumed.write({"step": step, "loss": float(step)})
    resumed.status("FINISHED")
    assert tensorboard_scalars(tmp_path / "tensorboard")["loss"] == [(step, float(step)) for step in range(10)]
    again = TensorBoardSink(start)
    again.load_state_dict({})  # a fresh start keeps nothing of earlier attempts
    assert not list((tmp_path / "tensorboard").iterdir())


class Collected(Sink):
    """A plugin's sink: what a run gave it, by run, in this process."""

    name = "collected"
    key = "collected"
    runs: dict = {}

    def __init__(self, run: RunStart, label: str = "none"):
        self.rows = Collected.runs.setdefault(run.name, {"label": label, "rows": [], "status": [], "start": run})

    def write(self, row):
        self.rows["rows"].append(dict(row))

    def status(self, status, message="", **details):
        self.rows["status"].append(status)


@pytest.fixture
def collected_sink():
    from pydantic import BaseModel, ConfigDict

    class CollectedParams(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        label: str = "none"

    Collected.Params = CollectedParams
    Collected.runs = {}
    plugin = types.ModuleType("collecting_plugin")

    @hookimpl
    def register_sinks(register):
        register(Collected)

    plugin.register_sinks = register_sinks
    get_plugin_manager().register(plugin, name="collecting_plugin")
    yield Collected
    get_plugin_manager().unregister("collecting_plugin")


@pytest.mark.slow  # a second engine run; the TensorBoard one above covers the path in the default suite
def test_a_plugin_sink_is_opened_for_each_run_with_its_params(tmp_path, collected_sink):
    spec = load_spec(write_spec(tmp_path, {**ONE_SIZE, "tracking": {"sinks": [{"kind": "collected",
                                                                              "params": {"label": "mine"}}]}}),
                     [f"output={tmp_path / 'out'}"])
    (result,) = Engine(spec).run()
    got = collected_sink.runs["s-seed0"]
    assert got["label"] == "mine" and got["status"] == ["RUNNING", "FINISHED"]
    assert got["start"].folder == result.output_dir and got["start"].tags["size"] == "s"
    assert got["start"].config["train.lr"] == "0.003"
    assert columns_of(got["rows"]) == columns_of(read_table(result.output_dir / "metrics.csv"))


def test_sink_names_and_options_are_checked_with_suggestions(tmp_path):
    spec = write_spec(tmp_path, ONE_SIZE)
    done = cli("validate", spec, "tracking.sinks=[mlflow,tensorbord]", "+tracking.uri=sqlite:///x.db")
    assert done.returncode == 1
    assert "tracking.sinks.1: unknown sink 'tensorbord' (did you mean 'tensorboard'?)" in done.stderr
    done = cli("validate", spec, "tracking.sinks=[{kind: tensorboard, params: {foldr: tb}}]")
    assert done.returncode == 1
    assert "tracking.sinks.0.params.foldr: unknown parameter (did you mean 'folder'?)" in done.stderr
    done = cli("validate", spec, "tracking.sinks=[tensorboard,tensorboard]")
    assert done.returncode == 1 and "sink 'tensorboard' is named more than once" in done.stderr
