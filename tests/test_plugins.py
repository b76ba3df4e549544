"""Estimators are pluggy plugins: built-ins, an installed third-party package, run-time registration."""

import importlib.metadata
import types

import pytest

import cases
from reference import lnp_reference
from specreach import measure_lnp
from specreach.lnp import Exact
from specreach.plugins import DuplicateComponentError, PluginLoadError, PluginManager, get_plugin_manager, hookimpl


def test_builtins_register_through_the_hook():
    manager = PluginManager(load_entry_points=False)
    registered = manager.estimators()
    assert {"exact", "hutchinson", "entk"} <= set(registered)
    assert {r.source for name, r in registered.items() if name in ("exact", "hutchinson", "entk")} == {
        "specreach.builtins"
    }


def test_example_plugin_is_installed_through_its_entry_point(float64):
    """plugins/specreach-kta, installed by the README's test command, registers 'kta'."""
    registered = get_plugin_manager().estimators()
    assert "kta" in registered
    assert registered["kta"].source.startswith("kta (specreach_kta")
    model, loss_fn, batch_a, batch_b = cases.build("mlp")
    expected = lnp_reference(model, loss_fn, batch_a)
    full = measure_lnp(model, loss_fn, batch_a, estimator="kta")
    assert full.spectral_position == pytest.approx(expected["spectral_position"], rel=1e-9)
    # Full batch, KTA = P · Tr Θ / ‖Θ‖_F, with ‖Θ‖_F² = Σ λ_k² from the spectrum.
    entk = measure_lnp(model, loss_fn, batch_a, estimator="entk")
    frobenius = sum(lam**2 for lam in entk.eigenvalues) ** 0.5
    assert full.extras["kernel_target_alignment"] == pytest.approx(
        entk.spectral_position * sum(entk.eigenvalues) / frobenius, rel=1e-9)
    cross = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="kta")
    assert abs(cross.extras["kernel_target_alignment"]) <= 1


def plugin_module(name, estimator_class):
    module = types.ModuleType(name)

    @hookimpl
    def register_estimators(register):
        register(estimator_class)

    module.register_estimators = register_estimators
    return module


def test_duplicate_name_names_both_plugins():
    class AnotherExact(Exact):
        pass  # inherits name = "exact"

    manager = PluginManager(load_entry_points=False)
    manager.register(plugin_module("my_plugin", AnotherExact), name="my_plugin")
    with pytest.raises(DuplicateComponentError, match="'exact' is registered twice, by .* and by .*"):
        manager.estimators()
    try:
        manager.estimators()
    except DuplicateComponentError as error:
        assert "specreach.builtins" in str(error) and "my_plugin" in str(error)


def test_runtime_registered_estimator_runs_through_measure_lnp(float64):
    class DoubleExact(Exact):
        """A deliberately different estimator, to show the registered class is the one used."""

        name = "double-exact"

        def chi_net(self, tape, outputs, problem):
            chi = super().chi_net(tape, outputs, problem)
            return type(chi)(2 * chi.value, chi.stderr, chi.by_group)

    manager = get_plugin_manager()
    manager.register(plugin_module("double", DoubleExact), name="double")
    try:
        model, loss_fn, batch_a, _ = cases.build("mlp")
        doubled = measure_lnp(model, loss_fn, batch_a, estimator="double-exact")
        exact = measure_lnp(model, loss_fn, batch_a, estimator="exact")
        assert doubled.network_magnitude == pytest.approx(2 * exact.network_magnitude, rel=1e-12)
        assert doubled.estimator == "double-exact"
    finally:
        manager.unregister("double")
    assert "double-exact" not in manager.estimators()


def test_broken_plugin_is_reported_and_skipped_unless_strict(monkeypatch):
    broken = importlib.metadata.EntryPoint(name="broken", value="specreach_no_such_module", group="specreach")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken] if group == "specreach" else [])
    with pytest.warns(UserWarning, match="skipping plugin broken .*ModuleNotFoundError"):
        manager = PluginManager()
    assert "exact" in manager.estimators()
    assert list(manager.failed) == ["broken (specreach_no_such_module)"]
    with pytest.raises(PluginLoadError, match="plugin broken .* failed to load"):
        PluginManager(strict=True)


def test_estimator_instances_can_be_passed_directly(float64):
    model, loss_fn, batch_a, _ = cases.build("mlp")
    result = measure_lnp(model, loss_fn, batch_a, estimator=Exact(max_outputs=3))
    assert result.estimator == "exact"
    with pytest.raises(ValueError, match="max_outputs=2"):
        measure_lnp(model, loss_fn, batch_a, estimator=Exact(max_outputs=2))
