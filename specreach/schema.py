"""The JSON schema of a spec, with the parameters of every installed component.

Pydantic's schema of :class:`~specreach.spec.Spec` knows ``data.params`` only as "a mapping". Here
each section that names a component gets, for every registered component, an ``if kind is X
then params follow X's parameter model`` clause, so an editor (or ``jsonschema``) checks and
completes ``data.params``, ``model.params``, ``measure.options``, ``execution.params`` and each of ``tracking.sinks`` as
strictly as ``specreach validate`` does, descriptions included.
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple

from specreach.plugins import PluginManager, get_plugin_manager
from specreach.spec import Spec


class ComponentSection(NamedTuple):
    kind: str  # the registry
    section: str  # the spec section's model in the schema's $defs
    name_key: str  # the key naming the component
    params_key: str  # the key holding its parameters


SECTIONS = (
    ComponentSection("model", "ModelSection", "kind", "params"),
    ComponentSection("dataset", "DataSection", "kind", "params"),
    ComponentSection("estimator", "MeasureSection", "estimator", "options"),
    ComponentSection("executor", "ExecutionSection", "kind", "params"),
    ComponentSection("sink", "SinkChoice", "kind", "params"),
)


def _move_definitions(schema: dict[str, Any], prefix: str, into: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its own ``$defs`` moved into ``into`` under ``prefix`` (references rewritten)."""
    schema = copy.deepcopy(schema)
    definitions = schema.pop("$defs", {})

    def rewrite(node: Any) -> None:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                node["$ref"] = f"#/$defs/{prefix}{reference.removeprefix('#/$defs/')}"
            for value in node.values():
                rewrite(value)
        elif isinstance(node, list):
            for value in node:
                rewrite(value)

    rewrite(schema)
    for name, definition in definitions.items():
        rewrite(definition)
        into[f"{prefix}{name}"] = definition
    return schema


def spec_schema(manager: PluginManager | None = None) -> dict[str, Any]:
    """The spec's JSON schema with the parameter models of the components ``manager`` registers."""
    manager = manager or get_plugin_manager()
    schema = Spec.model_json_schema()
    definitions = schema.setdefault("$defs", {})
    for place in SECTIONS:
        clauses = []
        for name, registered in manager.registry(place.kind).items():
            key = f"{place.kind}.{name}"
            if registered.params_known:
                params = _move_definitions(registered.params.model_json_schema(), f"{key}.", definitions)
                params["description"] = f"Parameters of the {place.kind} '{name}' ({registered.source})" + (
                    f": {registered.summary}" if registered.summary_known and registered.summary else "")
            else:  # reading them would import the component (torch and all): the spec's validation checks them
                params = {"type": "object", "description": (
                    f"Parameters of the {place.kind} '{name}' ({registered.source}), checked when a spec is validated: "
                    f"`specreach plugins {name}` lists them. (Registered without params=, so they are not read here; "
                    "see docs/plugins.md.)")}
            params["title"] = f"{name} parameters"
            if place.kind == "model":
                # model.params and each of model.sizes hold part of the parameters: none is required alone.
                params.pop("required", None)
            definitions[key] = params
            reference = {"$ref": f"#/$defs/{key}"}
            then: dict[str, Any] = {place.params_key: reference}
            if place.kind == "model":
                then["sizes"] = {"anyOf": [{"type": "object", "additionalProperties": reference}, {"type": "null"}]}
            clauses.append({"if": {"properties": {place.name_key: {"const": name}}, "required": [place.name_key]},
                            "then": {"properties": then}})
        section = definitions[place.section]
        section["allOf"] = clauses
        names = ", ".join(manager.registry(place.kind))
        field = section["properties"][place.name_key]
        field["description"] = f"{field.get('description', '')} Installed: {names}.".strip()
    # A sink is named by a plain name too (the spec reads `[mlflow, tensorboard]` as `[{kind: mlflow}, ...]`).
    sinks = definitions["TrackingSection"]["properties"]["sinks"]
    sinks["items"] = {"anyOf": [{"type": "string"}, sinks["items"]]}
    return schema
