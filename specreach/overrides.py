"""Command-line overrides of a spec, in Hydra's override grammar (``hydra-core``'s parser).

::

    train.lr=1e-3                   set a key (one the spec may hold, set in the file or not)
    train.lr=1e-4,1e-3              sweep it: a sweep axis, as sweep: {train.lr: [1e-4, 1e-3]}
    train.seeds=range(0,4)          range() and choice() sweeps too (a sweep of seeds sets the seeds)
    sweep.train.lr=[1e-4,1e-3]      set a sweep axis directly
    +train.grad_clip=1.0            add a key the file does not set (an error if it does)
    ~probe                          delete a key or section
    model.presets=[a,b]             one model form replaces the other (kind/params/sizes ↔ presets)
    execution.kind=local            another executor drops the old one's params (unless given too)
    name='with spaces'              quoting, lists [a,b] and mappings {a: 1}

An override of a key the spec cannot hold is refused with the closest valid key; every problem
names the override it came from.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

from specreach.spec_file import MAX_DEPTH, Problem, SpecError

Action = Literal["set", "add", "delete", "sweep"]
#: (config, key path) → the keys allowed there, or None when any key is.
AllowedKeys = Callable[[dict, tuple[str, ...]], "list[str] | None"]

# Setting one form of the model section removes the other.
MODEL_FORMS = {"presets": ("kind", "params", "sizes"), "kind": ("presets",)}


@dataclass(frozen=True)
class Override:
    text: str
    key: str
    action: Action
    value: Any = None

    @property
    def source(self) -> str:
        return f"override '{self.text}'"

    def problem(self, message: str, path: str | None = None) -> Problem:
        return Problem(self.source, None, self.key if path is None else path, message)


_parser = None


def parse(texts: Sequence[str]) -> list[Override]:
    """Parse every override; all the malformed ones are reported together."""
    global _parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    if _parser is None:
        _parser = OverridesParser.create()
    parsed, problems = [], []
    for text in texts:
        if "=" not in text and not text.lstrip().startswith("~"):
            problems.append(Problem(f"override '{text}'", None, text.strip(),
                                    "an override reads KEY=VALUE (e.g. train.lr=1e-3), +KEY=VALUE or ~KEY"))
            continue
        if _nesting(text) > MAX_DEPTH:  # Hydra's parser recurses once per bracket
            problems.append(Problem(f"override '{_shortened(text)}'", None, text.split("=", 1)[0].strip(" +~"),
                                    f"nested deeper than {MAX_DEPTH} levels of brackets; a spec needs a handful"))
            continue
        try:
            override = _parser.parse_override(text)
            if override.type == OverrideType.DEL:
                action: Action = "delete"
            elif override.is_sweep_override():
                action = "sweep"
            elif override.type == OverrideType.ADD:
                action = "add"
            else:  # CHANGE, and ++ (FORCE_ADD): set whether or not the file has the key
                action = "set"
            value = list(override.sweep_iterator()) if action == "sweep" else override.value()
        except RecursionError:
            problems.append(Problem(f"override '{_shortened(text)}'", None, text.split("=", 1)[0].strip(" +~"),
                                    "nested too deeply to be read; a spec needs a handful of levels"))
            continue
        except (HydraException, ValueError, TypeError) as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            problems.append(Problem(f"override '{text}'", None, text.split("=", 1)[0].strip(" +~"),
                                    f"cannot parse it: {message}"))
            continue
        key = override.key_or_group
        if override.package:
            problems.append(Problem(f"override '{text}'", None, key, "a spec has no packages (@...): write KEY=VALUE"))
            continue
        parsed.append(Override(text, key, action, _plain(value)))
    if problems:
        raise SpecError(problems)
    return parsed


def _nesting(text: str) -> int:
    """The deepest nesting of brackets and braces in ``text`` (quotes not considered: an upper bound)."""
    depth = deepest = 0
    for character in text:
        if character in "[{(":
            depth += 1
            deepest = max(deepest, depth)
        elif character in "]})":
            depth = max(0, depth - 1)
    return deepest


def _shortened(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}…"


def _plain(value: Any) -> Any:
    """Hydra's values as plain Python (its quoted strings and containers are already plain)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def apply(config: dict, overrides: Sequence[Override], allowed: AllowedKeys) -> tuple[dict, dict[str, str]]:
    """The config with the overrides applied (a copy), and which key each override set."""
    config = copy.deepcopy(config)
    executor = _lookup(config, ["execution", "kind"])
    origins: dict[str, str] = {}
    problems: list[Problem] = []
    for override in overrides:
        try:
            for key in _apply_one(config, override, allowed):
                origins[key] = override.source
        except SpecError as error:
            problems.extend(error.problems)
    if problems:
        raise SpecError(problems)
    _params_follow_the_executor(config, executor, origins)
    return config, origins


def _params_follow_the_executor(config: dict, before: Any, origins: dict[str, str]) -> None:
    """Another executor (``--executor local`` on a spec run with ``processes``) takes the parameters
    the overrides give it, not the ones the spec gave the executor it replaces."""
    execution = config.get("execution")
    if "execution.kind" not in origins or not isinstance(execution, dict) or execution.get("kind") == before:
        return
    params = execution.get("params")
    if isinstance(params, dict) and "execution.params" not in origins:
        execution["params"] = {key: value for key, value in params.items() if f"execution.params.{key}" in origins}


def _apply_one(config: dict, override: Override, allowed: AllowedKeys) -> list[str]:
    parts = override.key.split(".")
    if parts[0] == "sweep" and len(parts) > 1:
        return _apply_sweep_axis(config, override, ".".join(parts[1:]))
    if override.action == "sweep":
        _check_key(config, parts, override, allowed)
        if override.key == "train.seeds":  # seeds already sweep: the values are the seeds
            _set(config, parts, override.value, override)
            return [override.key]
        sweep = config.get("sweep")
        if sweep is None:
            sweep = config["sweep"] = {}
        if not isinstance(sweep, dict):
            raise SpecError([override.problem("the spec's sweep is not a mapping of keys to values", "sweep")])
        sweep[override.key] = override.value
        return [override.key, f"sweep.{override.key}"]
    if override.action == "delete":
        _delete(config, parts, override)
        return [override.key]
    _check_key(config, parts, override, allowed)
    if override.action == "add" and _lookup(config, parts) is not _MISSING:
        raise SpecError([override.problem(f"the spec already sets it; write {override.key}=VALUE to change it")])
    _set(config, parts, override.value, override)
    if parts[0] == "model" and len(parts) == 2 and parts[1] in MODEL_FORMS and isinstance(config["model"], dict):
        for other in MODEL_FORMS[parts[1]]:
            config["model"].pop(other, None)
    return [override.key]


def _apply_sweep_axis(config: dict, override: Override, axis: str) -> list[str]:
    sweep = config.get("sweep")
    if override.action == "delete":
        if not isinstance(sweep, dict) or axis not in sweep:
            raise SpecError([override.problem("the spec sweeps no such key")])
        del sweep[axis]
        return [override.key]
    values = override.value
    if not isinstance(values, list):
        raise SpecError([override.problem(f"a sweep axis takes a list of values, e.g. sweep.{axis}=[1,2] "
                                          f"(or {axis}=1,2)")])
    if sweep is None:
        sweep = config["sweep"] = {}
    if not isinstance(sweep, dict):
        raise SpecError([override.problem("the spec's sweep is not a mapping of keys to values", "sweep")])
    sweep[axis] = values
    return [override.key]


class _Missing:
    pass


_MISSING = _Missing()


def _lookup(config: Any, parts: list[str]) -> Any:
    node = config
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _check_key(config: dict, parts: list[str], override: Override, allowed: AllowedKeys) -> None:
    """Every part must be a key the spec may hold there (or an index of an existing list)."""
    from specreach.suggest import did_you_mean

    node: Any = config
    for depth, part in enumerate(parts):
        here = tuple(parts[:depth])
        where = ".".join(here) or "the spec"
        if isinstance(node, list):
            if not part.isdigit():
                raise SpecError([override.problem(f"{where} is a list: index it by position (0, 1, …) or set the "
                                                  "whole list")])
            if int(part) >= len(node):
                raise SpecError([override.problem(f"{where} has {len(node)} value{'s' * (len(node) != 1)}; index "
                                                  f"{part} is out of range: set the whole list, e.g. "
                                                  f"{where}=[...]")])
            node = node[int(part)]
            continue
        if node is not None and not isinstance(node, dict):
            raise SpecError([override.problem(f"{where} is a single value, not a section with keys")])
        keys = allowed(config, here)
        exists = isinstance(node, dict) and part in node
        if not exists and keys is not None and part not in keys:
            candidates = sorted(set(keys) | (set(map(str, node)) if isinstance(node, dict) else set()))
            raise SpecError([override.problem(f"no key '{part}' in {where}{did_you_mean(part, candidates)}")])
        node = node.get(part) if isinstance(node, dict) else None


def _set(config: dict, parts: list[str], value: Any, override: Override) -> None:
    node: Any = config
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = {}
        node = node[part]
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _delete(config: dict, parts: list[str], override: Override) -> None:
    parent = _lookup(config, parts[:-1]) if len(parts) > 1 else config
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise SpecError([override.problem("the spec does not set it: nothing to delete")])
