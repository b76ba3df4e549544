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


def test_duplicate_name_names_both_plugins_and_breaks_only_that_name():
    class AnotherExact(Exact):
        pass  # inherits name = "exact"

    manager = PluginManager(load_entry_points=False)
    manager.register(plugin_module("my_plugin", AnotherExact), name="my_plugin")
    with pytest.warns(UserWarning, match="'exact' is registered twice"):
        registered = manager.estimators()
    assert "exact" not in registered and "hutchinson" in registered  # the rest still works
    assert sorted(manager.conflicts("estimator")["exact"]) == ["my_plugin", "specreach.builtins"]
    with pytest.raises(DuplicateComponentError) as raised:
        manager.create("estimator", "exact")
    assert "my_plugin" in str(raised.value) and "specreach.builtins" in str(raised.value)
    strict = PluginManager(load_entry_points=False, strict=True)
    strict.register(plugin_module("my_plugin", AnotherExact), name="my_plugin")
    with pytest.raises(DuplicateComponentError, match="'exact' is registered twice"):
        strict.estimators()


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


def test_a_plugin_brings_rules_for_its_own_layers(float64):
    """A package's linear layer on a scaled input: its plugin registers the rule, and the measurement
    uses it (a layer rule, the readout's closed form) and still matches the explicit eNTK."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class HalfLinear(nn.Linear):
        def forward(self, x):
            return super().forward(0.5 * x)

    class HalfLinearRules:
        name = "half-linear"
        requires = None

        @staticmethod
        def install():
            from specreach.lnp.layer_rules import register_linear

            register_linear(HalfLinear, lambda layer: 0.5)

    module = types.ModuleType("half")

    @hookimpl
    def register_layer_rules(register):
        register(HalfLinearRules)

    module.register_layer_rules = register_layer_rules
    torch.manual_seed(0)
    model = nn.Sequential(HalfLinear(4, 3), nn.Tanh(), HalfLinear(3, 6))
    batch = (torch.randn(5, 4), torch.randint(0, 6, (5,)))
    before = measure_lnp(model, F.cross_entropy, batch).paths
    assert before["0.weight"].startswith("op rules: linear")  # unknown layer: seen through its F.linear
    manager = get_plugin_manager()
    manager.register(module, name="half")
    try:
        result = measure_lnp(model, F.cross_entropy, batch, estimator="exact")
        assert result.paths["0.weight"] == "HalfLinear layer rule of '0'"
        assert result.paths["2.weight"] == "closed form of the linear readout '2'"
        expected = lnp_reference(model, F.cross_entropy, batch)
        assert result.network_magnitude == pytest.approx(expected["network_magnitude"], rel=1e-9)
    finally:
        manager.unregister("half")


def test_the_measurement_core_imports_no_model_packages():
    import subprocess
    import sys

    code = "import sys, specreach.lnp; print(sorted({'mup', 'timm'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_the_schema_imports_no_component_registered_without_params():
    """Reading such a component's parameters means importing it (torch and all: seconds); the schema
    leaves them open and says where they are checked, the rest of it as strict as ever."""
    import types

    from specreach.plugins import PluginManager, hookimpl
    from specreach.schema import spec_schema

    plugin = types.ModuleType("unimported_plugin")

    @hookimpl
    def register_datasets(register):
        register("unimported_plugin_module.heavy:HeavySource", name="heavy-source")  # no such module

    plugin.register_datasets = register_datasets
    manager = PluginManager(load_entry_points=False)
    manager.register(plugin, name="unimported_plugin")
    schema = spec_schema(manager)  # importing the target would raise PluginLoadError
    heavy = schema["$defs"]["dataset.heavy-source"]
    assert heavy["type"] == "object" and "properties" not in heavy
    assert "`specreach plugins heavy-source` lists them" in heavy["description"]
    assert "properties" in schema["$defs"]["dataset.digits"]  # declared ones keep their parameters
