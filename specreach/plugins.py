"""The plugin registry: pluggy hook specifications and the registries they fill.

A plugin is any module or object with ``@hookimpl`` functions. Each hook receives a
``register`` callable and calls it once per component it contributes::

    from specreach.plugins import hookimpl

    @hookimpl
    def register_estimators(register):
        register(MyEstimator)                                   # the class itself, or
        register("my_package.heavy:MyEstimator", name="mine")   # by name, imported on first use

Registering by name keeps a plugin cheap to load: its module is imported only when a spec uses
the component. ``params="module:Params"`` names a parameter model that imports without the
component, so specs are validated without importing it either; other class attributes that the
spec layer reads (``uses_probes``) can be declared as keywords. Whatever is declared is checked
against the class when it is imported.

Third-party packages expose such a module under the ``specreach`` entry-point group.
The built-ins register through the same hooks (``specreach.builtins``), so nothing is special
about them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from functools import cached_property
from typing import Any, Callable

import pluggy

PROJECT = "specreach"
ENTRY_POINT_GROUP = "specreach"
BUILTIN_PLUGINS = ("specreach.builtins",)

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Hooks:
    """Hook specifications. Every hook is called once per plugin with its own ``register``."""

    @hookspec
    def register_estimators(self, register: Callable[..., None]) -> None:
        """Register LNP estimator classes (subclasses of ``specreach.lnp.Estimator``)."""

    @hookspec
    def register_datasets(self, register: Callable[..., None]) -> None:
        """Register data-source classes (subclasses of ``specreach.data.DataSource``)."""

    @hookspec
    def register_models(self, register: Callable[..., None]) -> None:
        """Register model-builder classes (subclasses of ``specreach.models.ModelBuilder``)."""

    @hookspec
    def register_executors(self, register: Callable[..., None]) -> None:
        """Register executors (subclasses of ``specreach.engine.executors.Executor``): how runs are run."""

    @hookspec
    def register_layer_rules(self, register: Callable[..., None]) -> None:
        """Register per-sample rules for a package's layers: classes with ``name``, ``requires`` (the
        module whose layers they cover) and ``install()`` (see ``specreach.lnp.layer_rules``)."""


class PluginLoadError(RuntimeError):
    """A plugin could not be imported or registered (raised only with strict loading)."""


class DuplicateComponentError(ValueError):
    """Two plugins registered a component under the same name."""


def import_target(target: str) -> Any:
    """``"package.module:attribute"`` → the attribute."""
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"'{target}' does not name an attribute: write 'package.module:Attribute'")
    return getattr(importlib.import_module(module_name), attribute)


class Registered:
    """A registered component, where it came from, and its parameter model.

    A component registered by name is imported on first access to :attr:`component`.
    """

    def __init__(self, name: str, source: str, target: Any, params: str | type | None = None,
                 declared: dict[str, Any] | None = None):
        self.name, self.source = name, source
        self._target, self._params, self.declared = target, params, dict(declared or {})

    def __repr__(self) -> str:
        return f"Registered({self.name!r}, from {self.source})"

    @property
    def loaded(self) -> bool:
        return not isinstance(self._target, str) or "component" in self.__dict__

    @cached_property
    def component(self) -> Any:
        if not isinstance(self._target, str):
            return self._target
        try:
            component = import_target(self._target)
        except Exception as error:
            raise PluginLoadError(f"{self.name!r} (registered by {self.source} as {self._target}) failed to import: "
                                  f"{type(error).__name__}: {error}") from error
        self._check(component)
        return component

    def _check(self, component: Any) -> None:
        """What was declared at registration must be what the class says."""
        mismatches = []
        if getattr(component, "name", self.name) != self.name:
            mismatches.append(f"name {component.name!r}")
        if self._params is not None and getattr(component, "Params", None) is not self.params:
            mismatches.append(f"Params {getattr(component, 'Params', None)!r} instead of {self.params!r}")
        for key, value in self.declared.items():
            if getattr(component, key, None) != value:
                mismatches.append(f"{key} = {getattr(component, key, None)!r} instead of {value!r}")
        if mismatches:
            raise PluginLoadError(f"{self.source} registered {self.name!r} as {self._target}, but that class has "
                                  + "; ".join(mismatches))

    @property
    def params_known(self) -> bool:
        """Whether :attr:`params` is available without importing the component."""
        return self._params is not None or self.loaded

    @cached_property
    def params(self) -> type:
        """The component's Pydantic parameter model."""
        if isinstance(self._params, str):
            return import_target(self._params)
        if self._params is not None:
            return self._params
        return self.component.Params

    def attribute(self, key: str, default: Any = None) -> Any:
        """A class attribute, from the declaration when there is one (no import)."""
        if key in self.declared:
            return self.declared[key]
        return getattr(self.component, key, default)


class PluginManager:
    """Loads the built-in and installed plugins and collects what each hook registers."""

    def __init__(self, *, strict: bool = False, load_entry_points: bool = True):
        self.strict = strict
        self.failed: dict[str, str] = {}
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(Hooks)
        self._cache: dict[str, dict[str, Registered]] = {}
        for module_name in BUILTIN_PLUGINS:
            self._pm.register(importlib.import_module(module_name), name=module_name)
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            source = f"{entry_point.name} ({entry_point.value})"
            if self._pm.has_plugin(source):
                continue
            try:
                self._pm.register(entry_point.load(), name=source)
            except Exception as error:  # a broken plugin must not take the tool down
                message = f"{type(error).__name__}: {error}"
                if self.strict:
                    raise PluginLoadError(f"plugin {source} failed to load: {message}") from error
                self.failed[source] = message
                warnings.warn(f"specreach: skipping plugin {source}, it failed to load: {message}", stacklevel=2)

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object (a module or an instance with hook implementations) at run time."""
        self._cache.clear()
        registered = self._pm.register(plugin, name=name)
        if registered is None:
            raise ValueError(f"plugin {name or plugin!r} is already registered")
        return registered

    def unregister(self, name: str) -> None:
        self._cache.clear()
        self._pm.unregister(name=name)

    def components(self, hook_name: str) -> dict[str, Registered]:
        """Everything registered through ``hook_name``, by component name."""
        if hook_name not in self._cache:
            found: dict[str, Registered] = {}
            for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
                source = impl.plugin_name

                def register(component: Any, *, name: str | None = None, params: str | type | None = None,
                             _source: str = source, **declared: Any) -> None:
                    if isinstance(component, str):
                        if not name:
                            raise TypeError(f"{_source}: registering {component!r} by name needs name=...")
                    else:
                        name = name or getattr(component, "name", None)
                        if not isinstance(name, str) or not name:
                            raise TypeError(f"{component!r} has no string attribute 'name' to register it under")
                    if name in found:
                        raise DuplicateComponentError(
                            f"{hook_name}: '{name}' is registered twice, by {found[name].source} and by {_source}"
                        )
                    entry = Registered(name, _source, component, params, declared)
                    if not isinstance(component, str):
                        entry._check(component)
                    found[name] = entry

                impl.function(register=register)
            self._cache[hook_name] = dict(sorted(found.items()))
        return self._cache[hook_name]

    def estimators(self) -> dict[str, Registered]:
        return self.components("register_estimators")

    def datasets(self) -> dict[str, Registered]:
        return self.components("register_datasets")

    def models(self) -> dict[str, Registered]:
        return self.components("register_models")

    def executors(self) -> dict[str, Registered]:
        return self.components("register_executors")

    def layer_rules(self) -> dict[str, Registered]:
        return self.components("register_layer_rules")


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _default
    if _default is None:
        _default = PluginManager()
    return _default
