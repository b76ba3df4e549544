"""The plugin registry: pluggy hook specifications and the registries they fill.

A plugin is any module or object with ``@hookimpl`` functions. Each hook receives a
``register`` callable and calls it once per component it contributes::

    from specreach.plugins import hookimpl

    @hookimpl
    def register_estimators(register):
        register(MyEstimator)

Third-party packages expose such a module under the ``specreach`` entry-point group.
The built-ins register through the same hooks, so nothing is special about them.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pluggy

PROJECT = "specreach"
ENTRY_POINT_GROUP = "specreach"
BUILTIN_PLUGINS = ("specreach.lnp.builtin", "specreach.data.builtin", "specreach.models.builtin")

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Hooks:
    """Hook specifications. Every hook is called once per plugin with its own ``register``."""

    @hookspec
    def register_estimators(self, register: Callable[[type], None]) -> None:
        """Register LNP estimator classes (subclasses of ``specreach.lnp.Estimator``)."""

    @hookspec
    def register_datasets(self, register: Callable[[type], None]) -> None:
        """Register data-source classes (subclasses of ``specreach.data.DataSource``)."""

    @hookspec
    def register_models(self, register: Callable[[type], None]) -> None:
        """Register model-builder classes (subclasses of ``specreach.models.ModelBuilder``)."""


class PluginLoadError(RuntimeError):
    """A plugin could not be imported or registered (raised only with strict loading)."""


class DuplicateComponentError(ValueError):
    """Two plugins registered a component under the same name."""


@dataclass(frozen=True)
class Registered:
    """A component and where it came from."""

    name: str
    component: Any
    source: str


def _component_name(component: Any) -> str:
    name = getattr(component, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{component!r} has no string attribute 'name' to register it under")
    return name


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

                def register(component: Any, _source: str = source) -> None:
                    name = _component_name(component)
                    if name in found:
                        raise DuplicateComponentError(
                            f"{hook_name}: '{name}' is registered twice, by {found[name].source} and by {_source}"
                        )
                    found[name] = Registered(name, component, _source)

                impl.function(register=register)
            self._cache[hook_name] = dict(sorted(found.items()))
        return self._cache[hook_name]

    def estimators(self) -> dict[str, Registered]:
        return self.components("register_estimators")

    def datasets(self) -> dict[str, Registered]:
        return self.components("register_datasets")

    def models(self) -> dict[str, Registered]:
        return self.components("register_models")


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _default
    if _default is None:
        _default = PluginManager()
    return _default
