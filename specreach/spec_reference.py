"""The spec reference (``docs/spec-reference.md``), rendered from the Pydantic models themselves.

Every section of :class:`specreach.spec.Spec` is found by walking the field annotations, so a
section added to the spec appears here without touching this module; the components' parameter
tables come from the built-in plugins only, so the page does not depend on what else is
installed. Regenerate with::

    python -m specreach.spec_reference > docs/spec-reference.md
"""

from __future__ import annotations

import inspect
import sys
import types
from pathlib import Path
from typing import Any, Iterator, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from specreach.plugins import PluginManager
from specreach.spec import Spec

REGENERATE = "python -m specreach.spec_reference > docs/spec-reference.md"

SIMPLE_TYPES = {int: "int", float: "float", str: "str", bool: "bool", Path: "path", Any: "any", type(None): "null"}


def _nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    """The Pydantic models an annotation refers to, through unions, lists and the like."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for argument in get_args(annotation):
        yield from _nested_models(argument)


def spec_sections() -> list[tuple[str, type[BaseModel]]]:
    """(dotted key, model) for the spec and every section nested in it, depth first in field order."""
    found: list[tuple[str, type[BaseModel]]] = []

    def walk(key: str, model: type[BaseModel]) -> None:
        found.append((key, model))
        for name, field in model.model_fields.items():
            for nested in _nested_models(field.annotation):
                walk(f"{key}.{name}" if key else name, nested)

    walk("", Spec)
    return found


def type_name(annotation: Any, sections: dict[type[BaseModel], str]) -> str:
    if annotation in SIMPLE_TYPES:
        return SIMPLE_TYPES[annotation]
    if annotation in sections:
        return f"section `{sections[annotation]}`"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    origin, arguments = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(dict.fromkeys(type_name(argument, sections) for argument in arguments))
    if origin is Literal:
        return " or ".join(f"`{value}`" for value in arguments)
    # Containers in YAML flow notation, which also keeps nested types unambiguous.
    if origin is list or (origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis):
        return f"[{type_name(arguments[0], sections)}, …]"
    if origin is tuple:
        return "[" + ", ".join(type_name(argument, sections) for argument in arguments) + "]"
    if origin is dict:
        key, value = arguments
        return f"{{{type_name(key, sections)}: {type_name(value, sections)}}}"
    return str(annotation)


def constraints(field: FieldInfo) -> list[str]:
    """Bounds, lengths and patterns that the field's validation enforces."""
    described = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Gt):
            described.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Ge):
            described.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Lt):
            described.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.Le):
            described.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.MinLen):
            described.append(f"length ≥ {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            described.append(f"length ≤ {item.max_length}")
        elif getattr(item, "pattern", None) is not None:
            described.append(f"matches `{item.pattern}`")
    return described


def yaml_value(value: Any) -> str:
    """A default as it would be written in a spec (flow-style YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {yaml_value(item)}" for key, item in value.items()) + "}"
    if isinstance(value, str) and not value:
        return '""'
    return str(value)


def default_text(field: FieldInfo, sections: dict[type[BaseModel], str]) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None and field.default_factory_takes_validated_data:
        return "derived from the other keys"
    value = field.default_factory() if field.default_factory is not None else field.default
    if isinstance(value, BaseModel):
        # A section that is present by default: its own table lists the defaults.
        return f"defaults of `{sections.get(type(value), type(value).__name__)}`"
    return f"`{yaml_value(value)}`"


def table_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def fields_table(model: type[BaseModel], prefix: str, sections: dict[type[BaseModel], str],
                 heading: str = "key") -> list[str]:
    if not model.model_fields:
        return ["No parameters."]
    lines = [f"| {heading} | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = type_name(field.annotation, sections)
        bounds = constraints(field)
        if bounds:
            kind += f" ({', '.join(bounds)})"
        cells = [f"`{prefix}{name}`", kind, default_text(field, sections), field.description or ""]
        lines.append("| " + " | ".join(table_cell(cell) for cell in cells) + " |")
    return lines


def own_docstring(cls: type) -> str | None:
    """The class's own docstring (not an inherited one), dedented."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if doc else None


def render_spec_sections() -> list[str]:
    found = spec_sections()
    sections = {model: key for key, model in found if key}
    lines: list[str] = []
    for key, model in found:
        lines += ["", f"## `{key}`" if key else "## Top level", ""]
        doc = own_docstring(model)
        if doc:
            lines += [doc, ""]
        lines += fields_table(model, f"{key}." if key else "", sections)
    return lines


#: (title, what registers them, where a spec names one and where its parameters go)
COMPONENT_KINDS = (
    ("Estimators", "estimators", "`measure.estimator`; parameters under `measure.options`"),
    ("Data sources", "datasets", "`data.kind`; parameters under `data.params`"),
    ("Models", "models", "`model.kind`; parameters under `model.params` and `model.sizes`"),
    ("Executors", "executors", "`execution.kind`; parameters under `execution.params`"),
    ("Sinks", "sinks", "`tracking.sinks: [NAME, …]`; parameters as `{kind: NAME, params: {…}}`"),
)


def component_notes(component: Any) -> list[str]:
    notes = [f"Class `{component.__module__}.{component.__qualname__}`."]
    if getattr(component, "uses_probes", False):
        notes.append(f"Draws probes: `measure.probes` (default {component.Params.model_fields['probes'].default}).")
    if getattr(component, "width_field", None):
        notes.append(f"muP width: `{component.width_field}`.")
    return notes


def render_components() -> list[str]:
    # Entry points are not loaded: the page lists the built-ins whatever else is installed.
    manager = PluginManager(load_entry_points=False)
    lines = ["", "## Built-in components", "",
             "Third-party components (see [writing a plugin](plugins.md)) are listed by `specreach plugins`."]
    for title, registry, where in COMPONENT_KINDS:
        lines += ["", f"### {title}", "", f"Named by {where}."]
        for name, registered in getattr(manager, registry)().items():
            component = registered.component
            lines += ["", f"#### `{name}`", "", " ".join(component_notes(component)), ""]
            lines += fields_table(component.Params, "", {}, heading="parameter")
    return lines


def render_spec_reference() -> str:
    """The whole reference page as Markdown; the same models always give the same text."""
    lines = [
        "# Spec reference",
        "",
        f"<!-- Generated from the Pydantic models by `{REGENERATE}`; do not edit by hand. -->",
        "",
        "Every key of a spec, with its type, default and meaning, followed by the parameters of",
        "every built-in component. Extra keys are errors at every level. See",
        "[specs, runs and tracking](engine.md) for how a spec runs.",
    ]
    lines += render_spec_sections()
    lines += render_components()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(render_spec_reference().encode("utf-8"))
