"""What a plugin author gets wrong is caught and said plainly: create() is the one way in, misspelt
hooks, components of the wrong type, plugins that register nothing or fail to import, names
registered twice, and the listing of parameters (`specreach plugins NAME`, `specreach schema`)."""

import importlib.metadata
import json
import subprocess
import sys
import textwrap
import types

import pytest
import yaml

from specreach.plugins import (
    DuplicateComponentError, PluginLoadError, PluginManager, UnknownComponentError, create, get_plugin_manager,
    hookimpl,
)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "specreach.cli", *args], capture_output=True, text=True, timeout=300)


def installed_as_entry_point(monkeypatch, tmp_path, module_name, source):
    """``source`` as an importable module that the (only) entry point of the 'specreach' group names."""
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    entry_point = importlib.metadata.EntryPoint(name=module_name, value=module_name, group="specreach")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [entry_point] if group == "specreach" else [])
    return f"{module_name} ({module_name})"


def test_create_is_the_one_way_into_every_registry():
    from specreach.data import Digits
    from specreach.engine.executors.processes import ProcessExecutor
    from specreach.lnp import Exact
    from specreach.models.builders import LlamaBuilder

    assert isinstance(create("dataset", "digits", validation_size=100), Digits)
    assert create("dataset", "digits", validation_size=100).params.validation_size == 100
    assert isinstance(create("model", "llama"), LlamaBuilder)
    assert create("executor", "processes", workers=3).params.workers == 3
    assert isinstance(create("executor", "processes"), ProcessExecutor)
    assert create("estimator", "exact", max_outputs=7).params.max_outputs == 7 and Exact
    with pytest.raises(ValueError, match="max_outputs"):
        create("estimator", "exact", max_outputs=0)
    with pytest.raises(UnknownComponentError, match=r"unknown data kind 'digit' \(did you mean 'digits'\?\)"):
        create("dataset", "digit")
    with pytest.raises(ValueError, match="no component kind 'data'; kinds: estimator, dataset, model"):
        create("data", "digits")


def test_a_misspelt_hook_is_caught_when_the_plugin_loads(monkeypatch, tmp_path):
    source = installed_as_entry_point(monkeypatch, tmp_path, "typo_plugin", """
        from specreach.plugins import hookimpl

        @hookimpl
        def register_estimator(register):
            raise AssertionError("never called")
    """)
    with pytest.warns(UserWarning, match=r"skipping plugin typo_plugin .*unknown hook 'register_estimator' "
                                         r"\(did you mean 'register_estimators'\?\)"):
        manager = PluginManager()
    assert list(manager.failed) == [source]
    assert not manager._pm.has_plugin(source)
    assert "exact" in manager.estimators()
    with pytest.raises(PluginLoadError, match="unknown hook 'register_estimator'"):
        PluginManager(strict=True)


def test_a_misspelt_hook_registered_at_run_time_is_an_error():
    module = types.ModuleType("typo")

    @hookimpl
    def register_dataset(register):
        pass

    module.register_dataset = register_dataset
    manager = PluginManager(load_entry_points=False)
    with pytest.raises(PluginLoadError, match=r"unknown hook 'register_dataset' \(did you mean 'register_datasets'"):
        manager.register(module, name="typo")
    assert not manager._pm.has_plugin("typo") and not manager.failed


def test_a_data_source_registered_as_an_estimator_is_refused(monkeypatch, tmp_path):
    from specreach.data import Digits

    module = types.ModuleType("confused")

    @hookimpl
    def register_estimators(register):
        register(Digits)  # a class, registered directly: refused at once

    module.register_estimators = register_estimators
    manager = PluginManager(load_entry_points=False)
    manager.register(module, name="confused")
    with pytest.warns(UserWarning, match="refused: confused registered 'digits' through register_estimators, but "
                                         "specreach.data.digits.Digits is not a subclass of "
                                         "specreach.lnp.estimator.Estimator"):
        assert "digits" not in manager.estimators()
    with pytest.raises(UnknownComponentError, match="estimator 'digits' was refused: .*not a subclass"):
        manager.create("estimator", "digits")
    assert "digits" in manager.datasets()  # the built-in data source is untouched

    # Registered by name, the class is checked when it is imported, before anything uses it.
    by_name = types.ModuleType("confused_by_name")

    @hookimpl
    def register_models(register):
        register("specreach.data.digits:Digits", name="digits-model")

    by_name.register_models = register_models
    manager.register(by_name, name="confused_by_name")
    with pytest.raises(PluginLoadError, match="registered 'digits-model' through register_models, but "
                                              ".*Digits is not a subclass of specreach.models.base.ModelBuilder"):
        manager.create("model", "digits-model")


def test_a_plugin_that_registers_nothing_is_warned_about(monkeypatch, tmp_path):
    source = installed_as_entry_point(monkeypatch, tmp_path, "unmarked_plugin", """
        def register_datasets(register):  # no @hookimpl: pluggy never calls it
            register("somewhere:Else", name="else")
    """)
    with pytest.warns(UserWarning, match=f"plugin {source.replace('(', '.').replace(')', '.')} registers nothing: "
                                         "its register_datasets lack the @hookimpl marker"):
        manager = PluginManager()
    assert manager.idle_plugins() == [source]
    assert not manager.failed


def test_an_unknown_name_after_a_plugin_failed_to_load_says_so(monkeypatch, tmp_path):
    installed_as_entry_point(monkeypatch, tmp_path, "broken_plugin", "import specreach_no_such_dependency\n")
    with pytest.warns(UserWarning, match="skipping plugin broken_plugin"):
        manager = PluginManager()
    with pytest.raises(UnknownComponentError) as raised:
        manager.create("estimator", "kta")
    message = str(raised.value)
    assert message.startswith("unknown estimator 'kta'; note that plugin failed to load and may be what registers it")
    assert "broken_plugin (broken_plugin): ModuleNotFoundError: No module named 'specreach_no_such_dependency'" in message
    assert "did you mean" not in message  # no built-in is offered in its place


def test_a_hook_that_raises_does_not_hide_the_other_plugins():
    module = types.ModuleType("buggy")

    @hookimpl
    def register_estimators(register):
        register(object, name=None)  # no name: the plugin's bug

    module.register_estimators = register_estimators
    manager = PluginManager(load_entry_points=False)
    manager.register(module, name="buggy")
    with pytest.warns(UserWarning, match="plugin buggy: its register_estimators hook raised TypeError"):
        assert {"exact", "hutchinson", "entk"} <= set(manager.estimators())
    assert "buggy" in manager.failed


def test_the_plugins_command_lists_a_duplicate_instead_of_failing(capsys):
    from specreach.cli import main
    from specreach.lnp import Exact

    class AnotherExact(Exact):
        pass

    module = types.ModuleType("duplicate")

    @hookimpl
    def register_estimators(register):
        register(AnotherExact)

    module.register_estimators = register_estimators
    manager = get_plugin_manager()
    manager.register(module, name="duplicate")
    try:
        assert main(["plugins"]) == 0
        out, err = capsys.readouterr()
        assert "warning: specreach: estimator 'exact' is registered twice" in err
        assert "exact            UNUSABLE: registered twice, by " in out
        assert "  hutchinson       from specreach.builtins" in out
        with pytest.raises(DuplicateComponentError):
            create("estimator", "exact")
    finally:
        manager.unregister("duplicate")
    assert "exact" in manager.estimators()


def test_plugins_name_prints_each_parameter_with_type_default_and_description():
    done = cli("plugins", "digits", "processes")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "digits  (dataset, from specreach.builtins: specreach.data.digits:Digits)" in out
    assert "  in a spec: data.kind: digits; parameters under data.params" in out
    assert "    validation_size: int, ≥ 1, < 1797; default 297\n" \
           "        Images held out as the validation pool (the last ones)." in out
    assert "    task: classification or next-pixel; default classification" in out
    assert "    max_retries: int, ≥ 0; default 2" in out
    assert "xor-quadrants" not in out and "hutchinson" not in out
    done = cli("plugins", "digts")
    assert done.returncode == 2 and "no component 'digts' is registered (did you mean 'digits'?)" in done.stderr


def test_plugins_params_describes_everything_installed():
    from specreach.plugins import KINDS

    done = cli("plugins", "--params")
    assert done.returncode == 0, done.stderr
    for kind in ("estimator", "dataset", "model", "executor"):
        for name in get_plugin_manager().registry(kind):
            assert f"\n{name}  ({kind}, from " in "\n" + done.stdout, name
    assert set(KINDS) >= {"estimator", "dataset", "model", "executor"}
    # The parameter descriptions come from each component's own Pydantic model.
    assert "max_memory_gb: float, > 0; default 4.0" in done.stdout


def test_schema_checks_component_parameters_as_validate_does():
    import jsonschema

    done = cli("schema")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    validator = jsonschema.Draft202012Validator(schema)
    definitions = schema["$defs"]
    for kind in ("estimator", "dataset", "model", "executor"):
        for name, registered in get_plugin_manager().registry(kind).items():
            assert set(definitions[f"{kind}.{name}"]["properties"]) == set(registered.params.model_fields), name
    digits = definitions["dataset.digits"]["properties"]["validation_size"]
    assert digits["description"] == "Images held out as the validation pool (the last ones)."
    assert (digits["default"], digits["exclusiveMaximum"]) == (297, 1797)

    with open("specs/quickstart.yaml") as handle:
        spec = yaml.safe_load(handle)
    assert list(validator.iter_errors(spec)) == []
    for section, key, bad in (("data", "params", {"contxt": 8}), ("measure", "options", {"readot": "exact"}),
                              ("model", "params", {"hiden": 8}), ("execution", "params", {"worker": 2})):
        wrong = {**spec, section: {**spec.get(section, {}), key: bad}}
        if section == "measure":
            wrong[section]["estimator"] = "hutchinson"
        if section == "execution":
            wrong[section]["kind"] = "processes"
        errors = [error.message for error in validator.iter_errors(wrong)]
        assert any(f"'{next(iter(bad))}' was unexpected" in error for error in errors), (section, errors)
