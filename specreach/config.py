"""YAML + command-line overrides → a validated :class:`~specreach.spec.Spec`, with errors that point
at ``FILE:LINE: key.path: message`` and suggest the closest valid key or kind.

Loading: the YAML is read with OmegaConf (so ``${train.lr}``-style interpolation works), dotted
overrides (``train.lr=1e-3``, ``model.presets=[a,b]``) are applied — an override of a key that
does not exist is an error, never a silently added key — and the result is validated by the
Pydantic spec. Line numbers come from the YAML node tree.
"""

from __future__ import annotations

import difflib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from specreach.models.presets import PRESETS
from specreach.plugins import get_plugin_manager
from specreach.spec import Spec

Path_ = tuple[Any, ...]


@dataclass(frozen=True)
class Problem:
    source: str  # file name, or "override"
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.path or '(spec)'}: {self.message}"


class SpecError(ValueError):
    """A spec that cannot be used; ``problems`` lists every issue found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _suggest(word: str, options) -> str:
    options = [str(o) for o in options]
    close = difflib.get_close_matches(str(word), options, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid: {', '.join(options)})" if options else ""


# --- line numbers --------------------------------------------------------------------------------

def line_map(text: str) -> dict[Path_, int]:
    """1-based line of every key path in a YAML document (list items by index)."""
    lines: dict[Path_, int] = {}

    def walk(node, path: Path_) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, index)] = item.start_mark.line + 1
                walk(item, (*path, index))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


def _line_for(lines: dict[Path_, int], path: Path_) -> int:
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return 1


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


def _component_params_class(config: dict, path: Path_) -> type[BaseModel] | None:
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


def valid_keys(config: dict, path: Path_) -> list[str] | None:
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

def _read(path: Path) -> str:
    if not path.is_file():
        raise SpecError([Problem(str(path), 1, "", "no such spec file; give the path of a YAML spec")])
    text = path.read_text()
    if not text.strip():
        raise SpecError([Problem(str(path), 1, "", "the spec file is empty; see specs/quickstart.yaml for an example")])
    return text


def _parse_override(override: str) -> tuple[str, Any]:
    if "=" not in override:
        raise SpecError([Problem("override", 1, override, "an override reads KEY=VALUE, e.g. train.lr=1e-3")])
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise SpecError([Problem("override", 1, key, f"cannot parse value {raw!r}: {error}")]) from None
    return key.strip(), value


def _check_override_key(config: dict, key: str, index: int) -> None:
    parts = key.split(".")
    node: Any = config
    for depth, part in enumerate(parts):
        here = tuple(parts[:depth])
        keys = valid_keys(config, here)
        exists = isinstance(node, dict) and part in node
        if not exists and keys is not None and part not in keys:
            candidates = sorted(set(keys) | (set(node) if isinstance(node, dict) else set()))
            raise SpecError([Problem("override", index, key, f"no key '{part}' in {'.'.join(here) or 'the spec'}"
                                     + _suggest(part, candidates))])
        node = node.get(part) if isinstance(node, dict) else None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[dict, dict[Path_, int], str]:
    """The resolved spec as a plain dict, its line map, and the source name for messages."""
    path = Path(path)
    text = _read(path)
    source = str(path)
    try:
        lines = line_map(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError([Problem(source, line, "", f"malformed YAML: {problem}")]) from None
    if not isinstance(raw, dict):
        raise SpecError([Problem(source, 1, "", f"a spec is a mapping of sections, not a {type(raw).__name__}")])
    config = OmegaConf.create(raw)
    for index, override in enumerate(overrides, start=1):
        key, value = _parse_override(override)
        _check_override_key(OmegaConf.to_container(config, resolve=False), key, index)
        OmegaConf.update(config, key, value, merge=False, force_add=True)
    try:
        resolved = OmegaConf.to_container(config, resolve=True)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "") or ""
        line = _line_for(lines, tuple(key.split("."))) if key else 1
        raise SpecError([Problem(source, line, key, f"interpolation failed: {str(error).splitlines()[0]}")]) from None
    return resolved, lines, source


def _component_problems(config: dict, lines: dict[Path_, int], source: str) -> list[Problem]:
    """Registry kinds and plugin parameters, checked first so that errors point at the exact key."""
    manager = get_plugin_manager()
    problems: list[Problem] = []

    def problem(path: Path_, message: str) -> None:
        problems.append(Problem(source, _line_for(lines, path), ".".join(map(str, path)), message))

    def check_params(params_class, params, path: Path_) -> None:
        if not isinstance(params, dict):
            problem(path, f"expected a mapping of parameters, got {type(params).__name__}")
            return
        try:
            params_class(**params)
        except ValidationError as error:
            for item in error.errors():
                loc = tuple(item["loc"])
                key_path = path + loc
                if item["type"] == "extra_forbidden":
                    problem(key_path, f"unknown parameter{_suggest(loc[-1], params_class.model_fields)}")
                else:
                    problem(key_path, item["msg"])

    model = config.get("model")
    if isinstance(model, dict):
        if isinstance(model.get("presets"), list):
            for index, name in enumerate(model["presets"]):
                if name not in PRESETS:
                    problem(("model", "presets", index), f"unknown preset '{name}'{_suggest(name, PRESETS)}")
        kind = model.get("kind")
        if kind is not None:
            registry = manager.models()
            if kind not in registry:
                problem(("model", "kind"), f"unknown model kind '{kind}'{_suggest(kind, registry)}")
            else:
                params_class = registry[kind].params
                shared = model.get("params") or {}
                sizes = model.get("sizes") or {"": {}}
                if isinstance(sizes, dict):
                    for size, overrides in sizes.items():
                        path = ("model", "sizes", size) if size else ("model", "params")
                        if isinstance(shared, dict) and isinstance(overrides, dict):
                            check_params(params_class, {**shared, **overrides}, path)
    data = config.get("data")
    if isinstance(data, dict) and isinstance(data.get("kind"), str):
        registry = manager.datasets()
        if data["kind"] not in registry:
            problem(("data", "kind"), f"unknown data kind '{data['kind']}'{_suggest(data['kind'], registry)}")
        else:
            check_params(registry[data["kind"]].params, data.get("params") or {}, ("data", "params"))
    measure = config.get("measure")
    if isinstance(measure, dict) and isinstance(measure.get("estimator"), str):
        registry = manager.estimators()
        if measure["estimator"] not in registry:
            problem(("measure", "estimator"),
                    f"unknown estimator '{measure['estimator']}'{_suggest(measure['estimator'], registry)}")
        elif measure.get("options") or registry[measure["estimator"]].params_known:
            check_params(registry[measure["estimator"]].params, measure.get("options") or {}, ("measure", "options"))
    execution = config.get("execution")
    if isinstance(execution, dict) and isinstance(execution.get("kind", "local"), str):
        registry = manager.executors()
        kind = execution.get("kind", "local")
        if kind not in registry:
            problem(("execution", "kind"), f"unknown executor '{kind}'{_suggest(kind, registry)}")
        else:
            check_params(registry[kind].params, execution.get("params") or {}, ("execution", "params"))
    return problems


def validate_config(config: dict, lines: dict[Path_, int], source: str) -> Spec:
    problems = _component_problems(config, lines, source)
    if problems:
        raise SpecError(problems)
    try:
        return Spec.model_validate(config)
    except ValidationError as error:
        for item in error.errors():
            loc = tuple(item["loc"])
            # Pydantic reports union members as extra loc parts (e.g. 'LogWindows'); drop them.
            loc = tuple(part for part in loc if not (isinstance(part, str) and part[:1].isupper()))
            message = item["msg"].removeprefix("Value error, ")
            if not loc and ": " in message and " " not in message.split(": ", 1)[0]:
                key, message = message.split(": ", 1)  # a cross-section check names its key
                loc = tuple(key.split("."))
            if item["type"] == "extra_forbidden":
                keys = valid_keys(config, loc[:-1]) or []
                message = f"unknown key{_suggest(loc[-1], keys)}"
            problems.append(Problem(source, _line_for(lines, loc), ".".join(map(str, loc)), message))
        raise SpecError(_unique(problems)) from None


def _unique(problems: list[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Load, override, resolve and validate a spec file."""
    config, lines, source = load_config(path, overrides)
    return validate_config(config, lines, source)
