"""Swept values as the run uses them, not as the YAML spelled them; and the values a sweep may hold.

YAML 1.1 (PyYAML) reads ``1e-3`` as the text '1e-3'; Pydantic turns it into the float 0.001 where
the spec declares a float. A run's sweep values (its tags in MLflow, run.json, exported columns)
must be that float, so that ``tags.`sweep.train.lr` = '0.001'`` finds the run whatever the spec
wrote. Spec keys are read back from the validated spec; keys inside a component's parameters
(``data.params.alpha``) are validated by that component's parameter model. Pure Pydantic: no torch.

Read that way, a sweep's values are checked strictly (:func:`sweep_value_problems`): ``true`` is not
a learning rate (Pydantic would read it as 1.0), and ``[1, 1.0]`` of a float is one value given
twice, which would run the same computation twice under two names.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import TypeAdapter, ValidationError

from specreach.plugins import lookup
from specreach.spec import Spec, sweep_value_label, with_values

#: Sections whose ``params`` (or ``options``) belong to a registered component: (kind key, registry).
COMPONENT_PARAMS = {("data", "params"): ("kind", "dataset"), ("model", "params"): ("kind", "model"),
                    ("measure", "options"): ("estimator", "estimator")}


def typed_value(spec: Spec, key: str, value: Any) -> Any:
    """``value`` of the dotted ``key`` as ``spec`` (the validated spec with it applied) means it."""
    parts = key.split(".")
    component = COMPONENT_PARAMS.get((parts[0], parts[1])) if len(parts) == 3 else None
    if component is not None:
        name_key, kind = component
        section = getattr(spec, parts[0])
        name = getattr(section, name_key)
        if name is None:  # model presets: no parameter model to read it with
            return value
        field = lookup(kind, name).params.model_fields.get(parts[2])
        if field is None or field.annotation is None:
            return value
        adapter: TypeAdapter[Any] = TypeAdapter(field.annotation)
        try:
            return adapter.dump_python(adapter.validate_python(value), mode="json")
        except ValidationError:
            return value
    node: Any = spec.model_dump(mode="json")
    for part in parts:
        if not isinstance(node, Mapping) or part not in node:
            return value
        node = node[part]
    return node


def typed_values(spec: Spec, assignments: Mapping[str, Any]) -> dict[str, Any]:
    """Every swept ``key: value`` of one combination, typed (see :func:`typed_value`)."""
    return {key: typed_value(spec, key, value) for key, value in assignments.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def sweep_value_problems(spec: Spec) -> list[tuple[tuple[Any, ...], str]]:
    """(key path, why) for every swept value that is a boolean where the key takes a number, or that
    means the same as an earlier value of its key once read as the key's type."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    for key, values in spec.sweep.items():
        meant: list[Any] = []
        for index, value in enumerate(values):
            try:
                typed = typed_value(with_values(spec, {key: value}), key, value)
            except ValueError:  # valid only with other swept values: the sweep's own check covered it
                typed = value
            if isinstance(value, bool) and _is_number(typed):
                problems.append((("sweep", key, index), f"expected a number, got {str(value).lower()}"))
            elif (earlier := next((i for i, other in enumerate(meant) if _same(other, typed)), None)) is not None:
                problems.append((("sweep", key, index), f"{sweep_value_label(value)} means the same as "
                                 f"{sweep_value_label(values[earlier])} ({sweep_value_label(typed)}) for {key}: "
                                 "each value is one set of runs; give it once"))
            meant.append(typed)
    return problems
