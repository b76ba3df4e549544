"""Swept values as the run uses them, not as the YAML spelled them.

YAML 1.1 (PyYAML) reads ``1e-3`` as the text '1e-3'; Pydantic turns it into the float 0.001 where
the spec declares a float. A run's sweep values (its tags in MLflow, run.json, exported columns)
must be that float, so that ``tags.`sweep.train.lr` = '0.001'`` finds the run whatever the spec
wrote. Spec keys are read back from the validated spec; keys inside a component's parameters
(``data.params.alpha``) are validated by that component's parameter model. Pure Pydantic: no torch.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import TypeAdapter, ValidationError

from specreach.plugins import lookup
from specreach.spec import Spec

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
