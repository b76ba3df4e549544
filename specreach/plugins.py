"""The plugin registry: pluggy hook specifications, the registries they fill, and
:func:`create`, the one way into every registry.

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
spec layer reads (``uses_probes``) can be declared as keywords, and ``summary="…"`` gives the
one-line description ``specreach plugins`` shows without importing anything. Whatever is
declared is checked against the class when it is imported, and so is its type: an estimator
must subclass ``Estimator``, a data source ``DataSource`` (a data source registered as an
estimator is refused).

Everything that uses a component goes through :func:`create` (an instance) or :func:`lookup`
(its registration): one error for an unknown name, with a did-you-mean, that also says when a
plugin failed to load and may be the one that would have registered it.

Third-party packages expose such a module under the ``specreach`` entry-point group.
The built-ins register through the same hooks (``specreach.builtins``), so nothing is special
about them. Mistakes of plugin authors are caught when the plugin loads: a hook name that is not
one of specreach's (pluggy's ``check_pending``), a module that registers nothing, a name
registered twice (an error when that name is used, naming both plugins; the rest keeps working).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable

import pluggy

from specreach.suggest import closest

if TYPE_CHECKING:
    from pydantic import BaseModel

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

    @hookspec
    def register_sinks(self, register: Callable[..., None]) -> None:
        """Register sinks (subclasses of ``specreach.engine.sinks.Sink``): where a run's records go besides
        its metrics table; a spec picks them in ``tracking.sinks``."""

    @hookspec
    def after_sweep(self, results: list, directory: Any) -> list | None:
        """Called once when the runs of a spec are over (finished, failed or stopped) with their
        :class:`~specreach.engine.runs.RunResult`\\ s and the spec's output folder; returns files (e.g.
        figures) to attach to the spec's parent run. The built-in one draws the training-dynamics figures."""


HOOK_NAMES = tuple(name for name in vars(Hooks) if name.startswith("register_"))
ALL_HOOKS = (*HOOK_NAMES, "after_sweep")


@dataclass(frozen=True)
class Kind:
    """A kind of component: the hook that registers it, the word errors use, what it must be."""

    name: str  # what create() and lookup() take: "estimator", "dataset", …
    hook: str
    noun: str  # in messages: "unknown estimator 'x'", "unknown data kind 'x'"
    singular: str  # one of them: "estimator", "data source"
    title: str  # in listings
    base: str | None  # "module:Class" every component must subclass; None: a class with install()


KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("estimator", "register_estimators", "estimator", "estimator", "estimators",
         "specreach.lnp.estimator:Estimator"),
    Kind("dataset", "register_datasets", "data kind", "data source", "data sources", "specreach.data.base:DataSource"),
    Kind("model", "register_models", "model kind", "model builder", "models", "specreach.models.base:ModelBuilder"),
    Kind("executor", "register_executors", "executor", "executor", "executors",
         "specreach.engine.executors:Executor"),
    Kind("layer_rules", "register_layer_rules", "layer rules", "layer-rules component", "layer rules", None),
    Kind("sink", "register_sinks", "sink", "sink", "sinks", "specreach.engine.sinks:Sink"),
)}
_KIND_OF_HOOK = {kind.hook: kind for kind in KINDS.values()}


class PluginLoadError(ValueError):
    """A plugin, or a component it registered, could not be imported or is not what it claims to be.

    Raised when the component is used (and, with strict loading, when the plugin loads)."""


class UnknownComponentError(ValueError):
    """No component of that kind is registered under that name."""


class DuplicateComponentError(ValueError):
    """Two plugins registered a component under the same name."""


def import_target(target: str) -> Any:
    """``"package.module:attribute"`` → the attribute."""
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"'{target}' does not name an attribute: write 'package.module:Attribute'")
    return getattr(importlib.import_module(module_name), attribute)


def kind_of(kind: str) -> Kind:
    if kind not in KINDS:
        raise ValueError(f"no component kind {kind!r}; kinds: {', '.join(KINDS)}")
    return KINDS[kind]


def type_problem(component: Any, kind: Kind) -> str | None:
    """Why ``component`` cannot be a ``kind`` component (None: it can).

    The base class is looked up in ``sys.modules`` only: a class that subclasses it has imported it,
    so a base that is not imported yet means the class is not one (and nothing is imported here)."""
    if not isinstance(component, type):
        return f"{component!r} is not a class"
    if kind.base is None:
        if not callable(getattr(component, "install", None)):
            return f"{component.__qualname__} has no install() method"
        return None
    module_name, _, class_name = kind.base.partition(":")
    base = getattr(sys.modules.get(module_name), class_name, None)
    if base is None or not issubclass(component, base):
        return (f"{component.__module__}.{component.__qualname__} is not a subclass of "
                f"{module_name}.{class_name}, as every {kind.singular} must be")
    return None


class Registered:
    """A registered component, where it came from, and its parameter model.

    A component registered by name is imported on first access to :attr:`component`.
    """

    def __init__(self, name: str, source: str, target: Any, params: str | type | None = None,
                 declared: dict[str, Any] | None = None, *, kind: Kind | None = None, summary: str | None = None):
        self.name, self.source, self.kind = name, source, kind
        self._target, self._params, self.declared = target, params, dict(declared or {})
        self._summary = summary

    def __repr__(self) -> str:
        return f"Registered({self.name!r}, from {self.source})"

    @property
    def loaded(self) -> bool:
        return not isinstance(self._target, str) or "component" in self.__dict__

    @property
    def target(self) -> str:
        """Where the component lives: ``module:Class``."""
        if isinstance(self._target, str):
            return self._target
        return f"{self._target.__module__}:{self._target.__qualname__}"

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
        """The class must be of its kind, and what was declared at registration what the class says."""
        if self.kind is not None and (problem := type_problem(component, self.kind)) is not None:
            raise PluginLoadError(f"{self.source} registered {self.name!r} through {self.kind.hook}, but {problem}")
        mismatches = []
        if getattr(component, "name", self.name) != self.name:
            mismatches.append(f"name {component.name!r}")
        if self._params is not None and getattr(component, "Params", None) is not self.params:
            mismatches.append(f"Params {getattr(component, 'Params', None)!r} instead of {self.params!r}")
        for key, value in self.declared.items():
            if getattr(component, key, None) != value:
                mismatches.append(f"{key} = {getattr(component, key, None)!r} instead of {value!r}")
        if mismatches:
            raise PluginLoadError(f"{self.source} registered {self.name!r} as {self.target}, but that class has "
                                  + "; ".join(mismatches))

    @property
    def params_known(self) -> bool:
        """Whether :attr:`params` is available without importing the component."""
        return self._params is not None or self.loaded

    @cached_property
    def params(self) -> type[BaseModel]:
        """The component's Pydantic parameter model."""
        if isinstance(self._params, str):
            return import_target(self._params)
        if self._params is not None:
            return self._params
        return self.component.Params

    @property
    def summary_known(self) -> bool:
        """Whether :attr:`summary` is available without importing the component."""
        return self._summary is not None or self.loaded

    @property
    def summary(self) -> str:
        """One line on what it is: the declared summary, else the first line of the class's docstring
        (which imports the component)."""
        if self._summary is not None:
            return self._summary
        lines = (self.component.__doc__ or "").strip().splitlines()
        return lines[0] if lines else ""

    def attribute(self, key: str, default: Any = None) -> Any:
        """A class attribute, from the declaration when there is one (no import)."""
        if key in self.declared:
            return self.declared[key]
        return getattr(self.component, key, default)


class PluginManager:
    """Loads the built-in and installed plugins and collects what each hook registers.

    Not strict (the default), a broken plugin or a refused component is reported (a warning, and
    :attr:`failed` / :attr:`refused`, which ``specreach plugins`` lists) and the rest works; strict,
    they raise :class:`PluginLoadError` / :class:`DuplicateComponentError`.
    """

    def __init__(self, *, strict: bool = False, load_entry_points: bool = True):
        self.strict = strict
        self.failed: dict[str, str] = {}  # plugin → why it (or one of its hooks) failed
        self.refused: dict[tuple[str, str], str] = {}  # (kind, component name) → why it was refused
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(Hooks)
        self._cache: dict[str, dict[str, Registered]] = {}
        self._conflicts: dict[str, dict[str, list[str]]] = {}
        self._contributors: dict[str, set[str]] = {}  # hook → plugins that registered something through it
        for module_name in BUILTIN_PLUGINS:
            self._pm.register(importlib.import_module(module_name), name=module_name)
        if load_entry_points:
            self._load_entry_points()

    # --- loading -----------------------------------------------------------------------------

    def _problem(self, message: str, error: type[Exception] = PluginLoadError) -> None:
        if self.strict:
            raise error(message)
        warnings.warn(f"specreach: {message}", stacklevel=3)

    def _load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            source = f"{entry_point.name} ({entry_point.value})"
            if self._pm.has_plugin(source):
                continue
            try:
                self._pm.register(entry_point.load(), name=source)
            except Exception as error:  # a broken plugin must not take the tool down
                self.failed[source] = f"{type(error).__name__}: {error}"
                self._problem(f"skipping plugin {source}, it failed to load: {self.failed[source]}")
                continue
            self._check_plugin(source)

    def _check_plugin(self, source: str) -> bool:
        """A newly registered plugin: hooks that specreach does not have (pluggy's ``check_pending``)
        unregister it; one without any hook implementation gets a warning. True: it stays."""
        plugin = self._pm.get_plugin(source)
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError:
            unknown = [caller.name for caller in self._pm.get_hookcallers(plugin) or () if not caller.has_spec()]
            self._pm.unregister(name=source)
            hints = []
            for name in unknown:
                close = closest(name, ALL_HOOKS)
                hints.append(f"'{name}'" + (f" (did you mean '{close}'?)" if close else ""))
            self.failed[source] = (f"unknown hook {', '.join(hints)}; specreach's hooks are "
                                   f"{', '.join(ALL_HOOKS)}")
            self._problem(f"skipping plugin {source}: {self.failed[source]}")
            return False
        if not self._pm.get_hookcallers(plugin):
            unmarked = [name for name in ALL_HOOKS if callable(getattr(plugin, name, None))]
            why = (f"its {', '.join(unmarked)} lack the @hookimpl marker (from specreach.plugins import hookimpl)"
                   if unmarked else f"it implements none of specreach's hooks ({', '.join(ALL_HOOKS)})")
            warnings.warn(f"specreach: plugin {source} registers nothing: {why}", stacklevel=3)
        return True

    def register(self, plugin: object, name: str | None = None) -> str:
        """Register a plugin object (a module or an instance with hook implementations) at run time."""
        self._forget()
        registered = self._pm.register(plugin, name=name)
        if registered is None:
            raise ValueError(f"plugin {name or plugin!r} is already registered")
        strict, self.strict = self.strict, True  # asked for explicitly: a mistake is an error
        try:
            self._check_plugin(registered)
        except PluginLoadError:
            self.failed.pop(registered, None)
            raise
        finally:
            self.strict = strict
        return registered

    def unregister(self, name: str) -> None:
        self._forget()
        self._pm.unregister(name=name)

    def _forget(self) -> None:
        self._cache.clear()
        self._conflicts.clear()
        self._contributors.clear()
        self.refused.clear()

    # --- what is registered ------------------------------------------------------------------

    def components(self, hook_name: str) -> dict[str, Registered]:
        """Everything registered through ``hook_name``, by component name (names registered twice
        are left out: :meth:`lookup` explains them, :meth:`conflicts` lists them)."""
        if hook_name not in self._cache:
            self._collect(hook_name)
        return self._cache[hook_name]

    def _collect(self, hook_name: str) -> None:
        kind = _KIND_OF_HOOK.get(hook_name)
        found: dict[str, Registered] = {}
        sources: dict[str, list[str]] = {}
        contributors: set[str] = set()
        for impl in getattr(self._pm.hook, hook_name).get_hookimpls():
            source = impl.plugin_name

            def register(component: Any, *, name: str | None = None, params: str | type | None = None,
                         summary: str | None = None, _source: str = source, **declared: Any) -> None:
                if isinstance(component, str):
                    if not name:
                        raise TypeError(f"{_source}: registering {component!r} by name needs name=...")
                else:
                    name = name or getattr(component, "name", None)
                    if not isinstance(name, str) or not name:
                        raise TypeError(f"{_source}: {component!r} has no string attribute 'name' to register it "
                                        "under (or give name=...)")
                contributors.add(_source)
                entry = Registered(name, _source, component, params, declared, kind=kind, summary=summary)
                if not isinstance(component, str):
                    try:
                        entry._check(component)
                    except PluginLoadError as error:
                        if kind is not None:
                            self.refused[(kind.name, name)] = str(error)
                        self._problem(f"refused: {error}")
                        return
                sources.setdefault(name, []).append(_source)
                found.setdefault(name, entry)

            try:
                impl.function(register=register)
            except Exception as error:  # a plugin's bug must not hide the other plugins' components
                if isinstance(error, PluginLoadError) and self.strict:
                    raise
                self.failed[source] = f"its {hook_name} hook raised {type(error).__name__}: {error}"
                self._problem(f"plugin {source}: {self.failed[source]}")
        conflicts = {name: names for name, names in sources.items() if len(names) > 1}
        for name, names in conflicts.items():
            self._problem(_duplicate_message(kind, hook_name, name, names), DuplicateComponentError)
        self._conflicts[hook_name] = dict(sorted(conflicts.items()))
        self._contributors[hook_name] = contributors
        self._cache[hook_name] = {name: entry for name, entry in sorted(found.items()) if name not in conflicts}

    def registry(self, kind: str) -> dict[str, Registered]:
        """The components of one kind (``"estimator"``, ``"dataset"``, ``"model"``, ``"executor"``,
        ``"layer_rules"``), by name."""
        return self.components(kind_of(kind).hook)

    def conflicts(self, kind: str) -> dict[str, list[str]]:
        """Names of ``kind`` registered by more than one plugin → those plugins."""
        hook = kind_of(kind).hook
        self.components(hook)
        return self._conflicts[hook]

    def idle_plugins(self) -> list[str]:
        """Plugins that are loaded and registered nothing through any hook."""
        for hook in HOOK_NAMES:
            self.components(hook)
        active = set().union(*self._contributors.values(),
                             (impl.plugin_name for impl in self._pm.hook.after_sweep.get_hookimpls()))
        return [name for name, _ in self._pm.list_name_plugin() if name not in active and name not in self.failed]

    def lookup(self, kind: str, name: str) -> Registered:
        """The registration of component ``name`` of ``kind``; an unknown name raises
        :class:`UnknownComponentError` with a did-you-mean (or the plugins that failed to load,
        which may be what would have registered it)."""
        registered = self.registry(kind)
        if name in registered:
            return registered[name]
        error = DuplicateComponentError if name in self.conflicts(kind) else UnknownComponentError
        raise error(self.why_unknown(kind, name))

    def why_unknown(self, kind: str, name: str) -> str:
        """What :meth:`lookup` says about a name that is not in the registry of ``kind``."""
        info = kind_of(kind)
        conflict = self.conflicts(kind).get(name)
        if conflict:
            return _duplicate_message(info, info.hook, name, conflict)
        if (kind, name) in self.refused:
            return f"{info.singular} '{name}' was refused: {self.refused[(kind, name)]}"
        return f"unknown {info.noun} '{name}'{self._hint(name, self.registry(kind))}"

    def _hint(self, name: str, registered: dict[str, Registered]) -> str:
        if self.failed:  # the missing name may be that plugin's: suggesting another would mislead
            broken = "; ".join(f"{source}: {why}" for source, why in self.failed.items())
            plural = "s" if len(self.failed) > 1 else ""
            return (f"; note that plugin{plural} failed to load and may be what registers it ({broken}); "
                    "fix or uninstall the plugin (`specreach plugins` lists what loaded)")
        close = closest(name, registered)
        if close:
            return f" (did you mean '{close}'?)"
        return f" (registered: {', '.join(registered)})" if registered else ""

    def create(self, kind: str, name: str, **params: Any) -> Any:
        """An instance of component ``name`` of ``kind`` with ``params`` (validated by its ``Params``)."""
        return self.lookup(kind, name).component(**params)

    def estimators(self) -> dict[str, Registered]:
        return self.registry("estimator")

    def datasets(self) -> dict[str, Registered]:
        return self.registry("dataset")

    def models(self) -> dict[str, Registered]:
        return self.registry("model")

    def executors(self) -> dict[str, Registered]:
        return self.registry("executor")

    def layer_rules(self) -> dict[str, Registered]:
        return self.registry("layer_rules")

    def sinks(self) -> dict[str, Registered]:
        return self.registry("sink")

    def after_sweep(self, results: list, directory: Any) -> list:
        """Every plugin's ``after_sweep`` hook; the files they made. A hook that fails warns and is
        skipped: what runs recorded is never lost to it."""
        files: list[Any] = []
        for impl in reversed(self._pm.hook.after_sweep.get_hookimpls()):  # registration order
            try:
                made: Any = impl.function(results=results, directory=directory)
                files.extend(made or [])
            except Exception as error:
                warnings.warn(f"specreach: {impl.plugin_name}'s after_sweep hook failed ({type(error).__name__}: "
                              f"{error}); the runs' records are intact", stacklevel=2)
        return files


def _duplicate_message(kind: Kind | None, hook: str, name: str, sources: list[str]) -> str:
    what = kind.singular if kind is not None else hook
    return (f"{what} '{name}' is registered twice, by {' and by '.join(sources)}: "
            "uninstall one of them, or rename the component in one")


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _default
    if _default is None:
        _default = PluginManager()
    return _default


def lookup(kind: str, name: str) -> Registered:
    """The registration of a component (:meth:`PluginManager.lookup` on the process-wide manager)."""
    return get_plugin_manager().lookup(kind, name)


def create(kind: str, name: str, **params: Any) -> Any:
    """The one way into every registry: an instance of the ``kind`` component called ``name``.

    ``create("estimator", "hutchinson", readout="exact")``, ``create("dataset", "digits")``,
    ``create("model", "llama")`` (a builder), ``create("executor", "processes", workers=2)``.
    """
    return get_plugin_manager().create(kind, name, **params)
