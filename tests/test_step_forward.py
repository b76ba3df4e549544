"""The training step's own forward of A, recorded for the measurement (specreach.lnp.step_forward):
the measurement gives what it gives without it, with one forward fewer where the step computed the
measured function, and falls back to its own forward where it did not (dropout, batch statistics)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from engine_helpers import write_spec
from specreach import Engine, LNPMonitor, load_spec
from specreach.engine import MonitorConfig, TableSink
from specreach.engine.metrics_table import read_table
from specreach.engine.tasks import token_cross_entropy
from specreach.models.llama import Llama, LlamaConfig

MEASURED = [0, 2, 3, 5]
COMPONENTS = ("grad_dot", "loss_magnitude", "network_magnitude", "spectral_position", "loss_b")


def _train(model, loss_fn, make_batch, pool, *, share: bool, tmp_path, name: str,
           step_scale: float = 1.0) -> tuple[list[dict], int]:
    """Six steps of a user's loop with the monitor; the rows and how many forwards the model ran."""
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    monitor = LNPMonitor(model, loss_fn, pool, MonitorConfig(total_steps=6, schedule=MEASURED, probes=2),
                         sink=TableSink(tmp_path / f"{name}.csv"))
    forwards = []
    hook = model.register_forward_hook(lambda *_: forwards.append(1))
    for step in range(6):
        x, y = make_batch(step)
        optimizer.zero_grad()
        if share:
            with monitor.record_forward(step):
                outputs = model(x)
            loss = step_scale * loss_fn(outputs, y)
            monitor.keep(outputs, loss)
            loss.backward(retain_graph=monitor.shares_forward(step))
        else:
            outputs = model(x)
            loss = step_scale * loss_fn(outputs, y)
            loss.backward()
        monitor.step(step, (x, y), loss, outputs=outputs)
        optimizer.step()
        monitor.after_update()
    monitor.close()
    hook.remove()
    return read_table(tmp_path / f"{name}.csv"), len(forwards)


def _assert_same_rows(shared: list[dict], own: list[dict]) -> None:
    assert len(shared) == len(own)
    for a, b in zip(shared, own):
        assert a["step"] == b["step"]
        for name in COMPONENTS:
            if isinstance(b.get(name), float) and math.isfinite(b[name]):
                assert a[name] == pytest.approx(b[name], rel=1e-9, abs=1e-15), (a["step"], name)
    assert [r["step"] for r in shared if isinstance(r.get("spectral_position"), float)
            and math.isfinite(r["spectral_position"])] == MEASURED


def _llama_run(tmp_path, dropout: float, share: bool, step_scale: float = 1.0):
    torch.manual_seed(1)
    model = Llama(LlamaConfig(vocab=32, layers=1, hidden=8, ff=16, heads=2, context=8)).double()
    if dropout:  # a user's model with dropout before the readout: training forwards draw random numbers
        model.norm = nn.Sequential(model.norm, nn.Dropout(dropout))
    data = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 32, (6 * 4 + 16, 9), generator=data)
    pool = (tokens[24:, :-1], tokens[24:, 1:])
    return _train(model, token_cross_entropy, lambda s: (tokens[4 * s:4 * s + 4, :-1], tokens[4 * s:4 * s + 4, 1:]),
                  pool, share=share, tmp_path=tmp_path, name=f"llama{dropout}{share}{step_scale}",
                  step_scale=step_scale)


def test_a_recorded_step_forward_measures_the_same_with_one_forward_fewer(tmp_path):
    shared, shared_forwards = _llama_run(tmp_path, dropout=0.0, share=True)
    own, own_forwards = _llama_run(tmp_path, dropout=0.0, share=False)
    _assert_same_rows(shared, own)
    # The first measured step compares the step's forward with the measured function's (once per
    # model); every later one takes A from the step.
    assert own_forwards - shared_forwards == len(MEASURED) - 1


def test_a_step_whose_loss_is_not_the_measured_one_still_measures_the_measured_loss(tmp_path):
    """A step that backpropagates half the loss (an accumulation scale): the measurement's g and L are the
    measured loss's, with or without the step's forward."""
    with pytest.warns(UserWarning, match="grad_a is not the gradient"):
        shared, _ = _llama_run(tmp_path, dropout=0.0, share=True, step_scale=0.5)
        own, _ = _llama_run(tmp_path, dropout=0.0, share=False, step_scale=0.5)
    _assert_same_rows(shared, own)


def test_a_step_with_dropout_is_not_the_measured_function_and_is_not_used(tmp_path):
    shared, shared_forwards = _llama_run(tmp_path, dropout=0.3, share=True)
    own, own_forwards = _llama_run(tmp_path, dropout=0.3, share=False)
    _assert_same_rows(shared, own)
    assert shared_forwards == own_forwards


class ShrinksInTraining(nn.Module):
    """A module whose training forward is another deterministic function than its eval forward."""

    def forward(self, x):
        return 0.9 * x if self.training else x


def test_a_training_forward_that_is_another_function_is_found_out_and_not_used(tmp_path):
    """No random numbers drawn, full precision, and still not the measured function (eval mode): found so
    at the first measured step, by comparing the step's outputs with the measured function's."""
    def run(share):
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(5, 7), ShrinksInTraining(), nn.Tanh(), nn.Linear(7, 3)).double()
        data = torch.Generator().manual_seed(4)
        x, y = torch.randn(40, 5, generator=data, dtype=torch.float64), torch.randint(0, 3, (40,), generator=data)
        return _train(model, nn.functional.cross_entropy, lambda s: (x[4 * s:4 * s + 4], y[4 * s:4 * s + 4]),
                      (x[24:], y[24:]), share=share, tmp_path=tmp_path, name=f"shrinks{share}")

    (shared, shared_forwards), (own, own_forwards) = run(True), run(False)
    _assert_same_rows(shared, own)
    assert shared_forwards == own_forwards


def test_the_engine_shares_the_step_forward_and_records_what_it_records_without(tmp_path, monkeypatch):
    spec = load_spec(write_spec(tmp_path), [f"output={tmp_path / 'out'}", "model.sizes={s: {hidden: 8, ff: 16}}"])
    forwards = {"shared": 0, "own": 0}

    def counting(original, key):
        def forward(self, *args, **kwargs):
            forwards[key] += 1
            return original(self, *args, **kwargs)
        return forward

    def table(key):
        monkeypatch.setattr(Llama, "forward", counting(original_forward, key))
        (result,) = Engine(spec.model_copy(update={"output": tmp_path / key})).run()
        assert result.status == "FINISHED"
        return read_table(tmp_path / key / "tiny" / "runs" / "s-seed0" / "metrics.csv")

    original_forward = Llama.forward
    shared = table("shared")
    monkeypatch.setattr(LNPMonitor, "shares_forward", lambda self, step: False)
    own = table("own")
    measured = [r for r in own if isinstance(r.get("spectral_position"), float) and math.isfinite(r["spectral_position"])]
    assert len(measured) >= 3
    for a, b in zip(shared, own):
        for name in COMPONENTS:
            if isinstance(b.get(name), float) and math.isfinite(b[name]):
                assert a[name] == pytest.approx(b[name], rel=1e-5), (a["step"], name)
    assert forwards["own"] - forwards["shared"] == len(measured) - 1
