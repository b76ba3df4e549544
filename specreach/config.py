"""YAML + command-line overrides → a validated :class:`~specreach.spec.Spec`, with errors that point
at ``FILE:LINE: key.path: message`` (or ``override 'KEY=VALUE': key.path: message``) and suggest
the closest valid key or kind.

Loading: the file is read safely (:mod:`specreach.spec_file`: UTF-8, bounded nesting and
aliases, no duplicate keys), overrides are applied in Hydra's grammar
(:mod:`specreach.overrides`), ``${...}`` interpolations are resolved by OmegaConf (never
``${oc.env:...}``: a spec does not read the environment, whose values would be copied into
spec.yaml and MLflow), and the result is validated by the Pydantic spec. What Pydantic lets
through is checked here too: a boolean where a number belongs (``lr: true`` is not 1.0), a
non-finite number, a kind that is not a name. :func:`check_spec` adds what depends on this
machine (its devices) and warns about model sizes too big for it.

Nothing here raises a raw Python error on any input: every problem is a :class:`SpecError`.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from specreach import overrides as override_grammar
from specreach.datainfo import outputs_problem
from specreach.models.presets import PRESETS
from specreach.plugins import get_plugin_manager
from specreach.spec import Spec
from specreach.spec_file import KeyPath, Problem, SpecError, line_for
from specreach.spec_file import load as load_file
from specreach.spec_interpolation import after_resolving, before_resolving
from specreach.spec_interpolation import leaves as _leaves
from specreach.suggest import closest, did_you_mean
from specreach.sweep_values import sweep_value_problems

__all__ = ["Loaded", "Problem", "SpecError", "check_spec", "load_config", "load_resumed_spec", "load_spec",
           "validate_config"]


@dataclass
class Loaded:
    """A spec file with its overrides applied and interpolations resolved, not yet validated."""

    config: Any
    lines: dict[KeyPath, int]
    source: str
    origins: dict[str, str]  # dotted key → the override that set it
    problems: list[Problem] = field(default_factory=list)  # found while reading (duplicate keys)

    def problem(self, path: KeyPath, message: str) -> Problem:
        """A problem at ``path``, blamed on the override that set it or on the file's line."""
        dotted = ".".join(map(str, path))
        for key, override in sorted(self.origins.items(), key=lambda item: -len(item[0])):
            if dotted == key or dotted.startswith(key + "."):
                return Problem(override, None, dotted, message)
        return Problem(self.source, line_for(self.lines, path), dotted, message)


# --- which keys exist ----------------------------------------------------------------------------

def _model_class(annotation) -> type[BaseModel] | None:
    """The BaseModel inside an annotation like ``X``, ``X | None`` or ``X | list[int]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for member in typing.get_args(annotation):
            found = _model_class(member)
            if found is not None:
                return found
    return None


def _component_params_class(config: dict, path: tuple) -> type[BaseModel] | None:
    """The plugin parameter model for ``model.params``, ``model.sizes.X``, ``data.params``,
    ``measure.options`` and ``execution.params``."""
    manager = get_plugin_manager()
    section = path[0] if path else None
    try:
        if section == "model" and (path[1:2] == ("params",) or (len(path) == 3 and path[1] == "sizes")):
            return manager.models()[config["model"]["kind"]].params
        if section == "data" and path[1:] == ("params",):
            return manager.datasets()[config["data"]["kind"]].params
        if section == "measure" and path[1:] == ("options",):
            return manager.estimators()[config["measure"].get("estimator", "hutchinson")].params
        if section == "execution" and path[1:] == ("params",):
            return manager.executors()[(config.get("execution") or {}).get("kind", "local")].params
    except (KeyError, TypeError, AttributeError):
        return None
    return None


def valid_keys(config: dict, path: tuple) -> list[str] | None:
    """Keys that may appear under ``path`` (None: any key)."""
    params_class = _component_params_class(config, path)
    if params_class is not None:
        return list(params_class.model_fields)
    cls: type[BaseModel] | None = Spec
    for part in path:
        if cls is None or part not in cls.model_fields:
            return None
        cls = _model_class(cls.model_fields[part].annotation)
    return list(cls.model_fields) if cls is not None else None


# --- loading -------------------------------------------------------------------------------------

def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Loaded:
    """The spec file with ``overrides`` applied and interpolations resolved (not validated)."""
    path = Path(path)
    data, lines, source, read_problems = load_file(path)
    if not isinstance(data, dict):
        raise SpecError([Problem(source, 1, "", f"a spec is a mapping of sections, not a {type(data).__name__}")])
    parsed = override_grammar.parse([str(o) for o in overrides])
    config, origins = override_grammar.apply(data, parsed, valid_keys)
    loaded = Loaded(config, lines, source, origins, read_problems)
    _refuse(loaded, before_resolving(loaded.config))
    try:
        loaded.config = OmegaConf.to_container(OmegaConf.create(config), resolve=True)
    except OmegaConfBaseException as error:
        key = str(getattr(error, "full_key", "") or "")
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SpecError([loaded.problem(tuple(key.split(".")) if key else (), f"cannot resolve it: {message}")]) \
            from None
    except (ValueError, TypeError, KeyError, RecursionError) as error:  # keys OmegaConf cannot hold
        raise SpecError([Problem(source, 1, "", f"cannot be read as a spec: {type(error).__name__}: {error}")]) \
            from None
    _refuse(loaded, after_resolving(loaded.config))
    return loaded


def _refuse(loaded: Loaded, problems: list[tuple[KeyPath, str]]) -> None:
    if problems:
        raise SpecError([loaded.problem(path, message) for path, message in problems])


# --- validation ----------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _component_problems(loaded: Loaded) -> list[Problem]:
    """Registry kinds and plugin parameters, checked first so that errors point at the exact key."""
    config = loaded.config
    manager = get_plugin_manager()
    problems: list[Problem] = []

    def problem(path: KeyPath, message: str) -> None:
        problems.append(loaded.problem(path, message))

    def check_params(params_class, params, path: KeyPath, shared_path: KeyPath | None = None,
                     own: dict | None = None) -> None:
        """``shared_path``: where keys not in ``own`` come from (model.params, for a size's params)."""
        if not isinstance(params, dict):
            problem(path, f"expected a mapping of parameters, got {_kind_of(params)}")
            return

        def param_problem(key_path: KeyPath, message: str) -> None:
            if shared_path is not None and key_path[len(path):len(path) + 1] and \
                    key_path[len(path)] not in (own or {}):
                key_path = shared_path + key_path[len(path):]
            problems.append(loaded.problem(key_path, message))

        try:
            validated = params_class(**{str(k): v for k, v in params.items()})
        except ValidationError as error:
            for item in error.errors():
                loc = tuple(item["loc"])
                if item["type"] == "extra_forbidden":
                    param_problem(path + loc, f"unknown parameter{did_you_mean(loc[-1], params_class.model_fields)}")
                else:
                    param_problem(path + loc, item["msg"].removeprefix("Value error, "))
            return
        except (TypeError, ValueError) as error:  # a parameter model's own validator that raised oddly
            param_problem(path, f"{type(error).__name__}: {error}")
            return
        for key, value in params.items():  # Pydantic takes true for 1: a number must be written as one
            if isinstance(value, bool) and _is_number(getattr(validated, str(key), None)):
                param_problem((*path, key), f"expected a number, got {str(value).lower()}")

    def kind_of(section: dict, key: str, default: str | None = None) -> str | None:
        kind = section.get(key, default)
        if kind is not None and not isinstance(kind, str):
            problem((section_name, key), f"must be a name (text), not {_kind_of(kind)}")
            return None
        return kind

    model = config.get("model")
    if isinstance(model, dict):
        section_name = "model"
        if isinstance(model.get("presets"), list):
            for index, name in enumerate(model["presets"]):
                if not isinstance(name, str) or name not in PRESETS:
                    problem(("model", "presets", index), f"unknown preset '{name}'{did_you_mean(name, PRESETS)}")
        kind = kind_of(model, "kind")
        if kind is not None:
            registry = manager.models()
            if kind not in registry:
                problem(("model", "kind"), manager.why_unknown("model", kind))
            else:
                params_class = registry[kind].params
                shared = model.get("params") or {}
                sizes = model.get("sizes") or {"": {}}
                if not isinstance(shared, dict):
                    problem(("model", "params"), f"expected a mapping of parameters, got {_kind_of(shared)}")
                elif not isinstance(sizes, dict):
                    problem(("model", "sizes"), f"expected a mapping of size names to parameters, got "
                                                f"{_kind_of(sizes)}")
                else:
                    for size, size_params in sizes.items():
                        path = ("model", "sizes", size) if size != "" else ("model", "params")
                        if isinstance(size_params, dict):
                            check_params(params_class, {**shared, **size_params}, path, ("model", "params"),
                                         size_params)
                        else:
                            problem(path, f"expected a mapping of parameters, got {_kind_of(size_params)}")
    data = config.get("data")
    if isinstance(data, dict):
        section_name = "data"
        kind = kind_of(data, "kind")
        registry = manager.datasets()
        if kind is not None and kind not in registry:
            problem(("data", "kind"), manager.why_unknown("dataset", kind))
        elif kind is not None:
            check_params(registry[kind].params, data.get("params") or {}, ("data", "params"))
    measure = config.get("measure")
    if isinstance(measure, dict):
        section_name = "measure"
        estimator = kind_of(measure, "estimator")
        registry = manager.estimators()
        if estimator is not None and estimator not in registry:
            problem(("measure", "estimator"), manager.why_unknown("estimator", estimator))
        elif estimator is not None and (measure.get("options") or registry[estimator].params_known):
            check_params(registry[estimator].params, measure.get("options") or {}, ("measure", "options"))
    tracking = config.get("tracking")
    if isinstance(tracking, dict) and isinstance(tracking.get("sinks"), list):
        registry = manager.sinks()
        for index, choice in enumerate(tracking["sinks"]):
            kind = choice if isinstance(choice, str) else choice.get("kind") if isinstance(choice, dict) else None
            if not isinstance(kind, str):
                continue  # the spec's own validation says what a sink entry must be
            path = ("tracking", "sinks", index)
            if kind not in registry:
                problem((*path, "kind") if isinstance(choice, dict) else path, manager.why_unknown("sink", kind))
            elif isinstance(choice, dict):
                check_params(registry[kind].params, choice.get("params") or {}, (*path, "params"))
    execution = config.get("execution")
    if isinstance(execution, dict):
        section_name = "execution"
        kind = kind_of(execution, "kind", "local")
        registry = manager.executors()
        if kind is not None and kind not in registry:
            problem(("execution", "kind"), manager.why_unknown("executor", kind))
        elif kind is not None:
            check_params(registry[kind].params, execution.get("params") or {}, ("execution", "params"))
    return problems


def _sweep_problems(loaded: Loaded) -> list[Problem]:
    """Swept keys that name no key of the spec, with the closest one that does."""
    sweep = loaded.config.get("sweep")
    if not isinstance(sweep, dict):
        return []
    problems = []
    for key in sweep:
        if not isinstance(key, str):
            continue
        parts = key.split(".")
        for depth, part in enumerate(parts):
            keys = valid_keys(loaded.config, tuple(parts[:depth]))
            if keys is None or part in keys:
                continue
            close = closest(part, keys)
            where = ".".join(parts[:depth]) or "the spec"
            hint = f" (did you mean '{'.'.join([*parts[:depth], close])}'?)" if close else \
                f" (keys there: {', '.join(keys)})"
            problems.append(loaded.problem(("sweep", key), f"no key '{part}' in {where}{hint}"))
            break
    return problems


def _kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "a boolean", type(None): "nothing (null)"}.get(
        type(value), f"a {type(value).__name__}")


def _top_level_problems(loaded: Loaded) -> list[Problem]:
    """Keys that cannot be fields at all (not text), dotted keys written in the file, non-finite numbers."""
    problems = []
    for key in loaded.config:
        if not isinstance(key, str):
            problems.append(loaded.problem((key,), f"a key must be a name, not {_kind_of(key)} {key!r}"))
    for path, value in _leaves(loaded.config):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(loaded.problem(path, f"{value} is not a usable number here; write a finite value"))
        elif any(not isinstance(part, (str, int)) or isinstance(part, bool) for part in path):
            bad = next(part for part in path if not isinstance(part, (str, int)) or isinstance(part, bool))
            problems.append(loaded.problem(path, f"a key must be a name, not {_kind_of(bad)} {bad!r}"))
    return problems


def _pydantic_problems(loaded: Loaded, error: ValidationError, checked: frozenset[str] | set[str] = frozenset()
                       ) -> list[Problem]:
    """What Pydantic found. ``checked``: sections whose components were already found wrong, with the
    exact key (:func:`_component_problems`): Pydantic's own report of the same mistake is left out."""
    problems: list[Problem] = []
    items = []
    for item in error.errors():
        loc, tag = _config_path(loaded.config, tuple(item["loc"]))
        section = str(loc[0]) if loc else ""
        if section in checked and (item["type"] in ("unknown_kind", "unknown_preset")
                                   or (item["type"] != "missing" and not _in_config(loaded.config, loc))):
            continue  # a component's complaint, raised again from inside the section's validator
        items.append({**item, "path": loc, "tag": tag})
    # A union (e.g. measure.schedule) reports every member's complaint; keep the member that came closest.
    tags: dict[KeyPath, dict[str, int]] = {}
    for item in items:
        if item["tag"] is not None:
            place, name = item["tag"]
            tags.setdefault(place, {}).setdefault(name, 0)
            tags[place][name] += 1
    best = {place: min(counts, key=counts.get) for place, counts in tags.items()}
    for item in items:
        if item["tag"] is not None and best[item["tag"][0]] != item["tag"][1]:
            continue
        loc = item["path"]
        message = item["msg"].removeprefix("Value error, ")
        if not loc and ": " in message and " " not in message.split(": ", 1)[0]:
            key, message = message.split(": ", 1)  # a cross-section check names its key
            loc = tuple(key.split("."))
            if loc[0] in checked:
                continue
        if item["type"] == "extra_forbidden" and loc:
            keys = valid_keys(loaded.config, loc[:-1]) or []
            last = str(loc[-1])
            if "." in last and len(loc) == 1:
                message = (f"unknown key: dotted keys are not expanded in a spec file; write "
                           f"{last.split('.')[0]}: {{{'.'.join(last.split('.')[1:])}: ...}}")
            else:
                message = f"unknown key{did_you_mean(last, keys)}"
        problems.append(loaded.problem(loc, message))
    return problems


def _in_config(config: Any, path: KeyPath) -> bool:
    """Whether the config holds ``path`` (a key that is not there was reported by a nested validation,
    such as a component's parameters checked from its section)."""
    node = config
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return False
    return True


def _config_path(config: Any, loc: KeyPath) -> tuple[KeyPath, tuple[KeyPath, str] | None]:
    """Pydantic's error location → the key path in the config, without union member names (which
    Pydantic inserts, e.g. 'LogWindows' or 'list[int]'); also the union member, if one was named."""
    path: list = []
    node = config
    tag = None
    for part in loc:
        if isinstance(node, dict) and (part in node or str(part) in map(str, node)):
            path.append(part)
            node = node.get(part, None) if part in node else None
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(part, str) and (part[:1].isupper() or "[" in part):
            tag = (tuple(path), part)
        else:
            path.append(part)
            node = None
    return tuple(path), tag


def _bool_problems(loaded: Loaded, spec: Spec) -> list[Problem]:
    """``lr: true`` validates as 1.0 in Pydantic: a number must be written as a number."""
    dumped = spec.model_dump(mode="python")
    problems = []
    for path, value in _leaves(loaded.config):
        if not isinstance(value, bool):
            continue
        node: Any = dumped
        for part in path:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, (list, tuple)) and isinstance(part, int) and part < len(node):
                node = node[part]
            else:
                node = None
                break
        if _is_number(node):
            problems.append(loaded.problem(path, f"expected a number, got {str(value).lower()}"))
    return problems


def validate_config(loaded: Loaded) -> Spec:
    """The validated spec, or one SpecError with every problem found: duplicate keys, kinds and
    parameters of components, values, each reported once."""
    problems = [*loaded.problems, *_top_level_problems(loaded)]
    components = _component_problems(loaded) + _sweep_problems(loaded)
    problems += components
    spec = None
    try:
        spec = Spec.model_validate(loaded.config)
    except ValidationError as error:
        checked = {problem.path.split(".")[0] for problem in components}
        problems += _pydantic_problems(loaded, error, checked)
    except (TypeError, ValueError, KeyError, AttributeError) as error:  # a validator met a shape it did not expect
        if not problems:
            problems.append(Problem(loaded.source, 1, "", f"cannot be validated: {type(error).__name__}: {error}"))
    if spec is not None:
        problems += _bool_problems(loaded, spec) + [loaded.problem(path, why) for path, why in sweep_value_problems(spec)]
        if not problems:  # sweep values checked first: the output check expands the runs
            problems += _output_problems(loaded, spec)
    if problems or spec is None:
        raise SpecError(problems)
    return spec


def _output_problems(loaded: Loaded, spec: Spec) -> list[Problem]:
    """Models whose outputs cannot fit the data's task, where both sides declare their sizes in their
    parameter models (:mod:`specreach.datainfo`): found before any model is built, at the model's key."""
    from specreach.engine.runs import TrackingTarget, expand

    manager = get_plugin_manager()
    problems, seen = [], set()
    for run in expand(spec, Path(spec.output) / spec.name, TrackingTarget.off()):
        data, model = run.data, run.recipe
        key = repr((model.kind, sorted(model.params.items()), data.kind, sorted(data.params.items())))
        if run.phase != "train" or key in seen:  # a linear probe gets a head of the data's size
            continue
        seen.add(key)
        data_params = manager.lookup("dataset", data.kind).params(**data.params)
        model_params = manager.lookup("model", model.kind).params(**model.params)
        if not (hasattr(data_params, "task_outputs") and hasattr(model_params, "declared_outputs")):
            continue  # the run checks it on the built model
        declared = model_params.declared_outputs()
        message = None if declared is None else outputs_problem(
            declared, data_params.task_outputs(), run.size if spec.model.presets else model.kind, data.kind)
        if message is not None:
            presets = spec.model.presets or []
            where = ("model", "presets", presets.index(run.size)) if run.size in presets else \
                ("model", "sizes", run.size) if spec.model.sizes and run.size in spec.model.sizes else ("model", "params")
            problems.append(loaded.problem(where, message))
    return problems


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Load, override, resolve and validate a spec file."""
    return validate_config(load_config(path, overrides))


def load_resumed_spec(directory: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """The spec of an interrupted run directory (its resolved ``spec.yaml``), for ``--resume``.

    ``overrides`` may change how the runs execute (``execution.…``), never what they compute."""
    spec_path = Path(directory) / "spec.yaml"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{directory} is not a specreach run directory: it has no spec.yaml")
    keys = [override.split("=", 1)[0].strip().lstrip("+~") for override in overrides]
    changed = [override for override, key in zip(overrides, keys) if not key.startswith("execution")]
    if changed:
        raise ValueError(f"--resume continues the runs as they were; only execution.* may be overridden, "
                         f"not {', '.join(changed)}")
    kinds = [override.split("=", 1)[1].strip() for override, key in zip(overrides, keys) if key == "execution.kind"]
    recorded = load_config(spec_path).config.get("execution") or {}
    if kinds and kinds[-1] != recorded.get("kind", "local"):
        overrides = ["execution.params={}", *overrides]  # the recorded parameters were the other executor's
    return load_spec(spec_path, overrides)


# --- what depends on this machine ----------------------------------------------------------------

def check_spec(path: str | Path, overrides: Sequence[str] = (), *, here: bool = True) -> tuple[Spec, list[str]]:
    """:func:`load_spec`, then (``here``: the runs execute on this machine) refuse devices this
    machine does not have; returns the spec and warnings (sizes too big for this machine)."""
    from specreach.engine.sizes import size_warnings
    from specreach.machine import device_problem

    loaded = load_config(path, overrides)
    spec = validate_config(loaded)
    problems = []
    if here and spec.execution.kind in ("local", "processes"):
        problem = device_problem(spec.train.device)
        if problem:
            problems.append(loaded.problem(("train", "device"), problem))
    if problems:
        raise SpecError(problems)
    return spec, size_warnings(spec, here=here and spec.execution.kind in ("local", "processes"))
