"""``${...}`` in a spec: references to other keys, and nothing else.

OmegaConf resolves two kinds of interpolation: a reference (``${model.params.context}``) and a
resolver call (``${oc.env:TOKEN}``, ``${oc.decode:TEXT}``, …). Resolvers reach outside the spec,
and what they return is copied into ``spec.yaml`` and MLflow params: ``oc.env`` reads the
environment, and ``oc.decode`` parses text as a new interpolation, so a resolver can be assembled
from harmless pieces (``${oc.decode:'${a}{oc.env:TOKEN}'}`` with ``a: "$"``). So a spec calls no
resolver at all, and a value must not *become* an interpolation when it is resolved either
(``spec.yaml`` holds resolved values, and ``--resume`` resolves them again): both are checked, the
file's and the overrides' values, before and after resolution.
"""

from __future__ import annotations

from typing import Any, Iterator

from omegaconf import grammar_parser
from omegaconf.errors import GrammarParseError
from omegaconf.grammar.gen.OmegaConfGrammarParser import OmegaConfGrammarParser

from specreach.spec_file import KeyPath

WHY = "what it returns would be copied into spec.yaml and MLflow params; write the value, or pass it as an override"


def _nodes(tree) -> Iterator[Any]:
    yield tree
    for index in range(tree.getChildCount() if hasattr(tree, "getChildCount") else 0):
        yield from _nodes(tree.getChild(index))


def _parsed(text: str):
    """The grammar tree of a value, or None where it holds no interpolation (or cannot be parsed:
    OmegaConf then reports it while resolving)."""
    if "${" not in text:
        return None
    try:
        return grammar_parser.parse(text)
    except (GrammarParseError, RecursionError):
        return None


def resolver_problem(text: str) -> str | None:
    """Why ``text`` may not stand in a spec (it calls a resolver), or None."""
    tree = _parsed(text)
    if tree is None:
        return None
    for node in _nodes(tree):
        if isinstance(node, OmegaConfGrammarParser.InterpolationResolverContext):
            name = node.resolverName().getText()
            if name in ("oc.env", "env"):
                arguments = node.sequence()
                variable = arguments.element(0).getText() if arguments is not None else "?"
                return f"reads environment variable {variable}: a spec does not read the environment ({WHY})"
            return f"calls the resolver '{name}': a spec may refer to its own keys (${{train.lr}}) but calls no " \
                   f"resolver (one can read the environment, and {WHY})"
    return None


def is_interpolation(text: str) -> bool:
    """Whether ``text`` would be resolved again (it holds a ``${...}`` OmegaConf reads)."""
    tree = _parsed(text)
    return tree is not None and any(type(node).__name__.startswith("Interpolation") for node in _nodes(tree))


def leaves(node: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every (key path, value) below ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, (*path, index))
    else:
        yield path, node


def before_resolving(config: Any) -> list[tuple[KeyPath, str]]:
    """(path, why) of every value that calls a resolver."""
    return [(path, why) for path, value in leaves(config)
            if isinstance(value, str) and (why := resolver_problem(value)) is not None]


def after_resolving(config: Any) -> list[tuple[KeyPath, str]]:
    """(path, why) of every resolved value that is an interpolation again."""
    return [(path, "resolves to text that is an interpolation again ('${...}'), which --resume would resolve "
                   "anew from spec.yaml (a way to assemble ${oc.env:...}); write the value itself")
            for path, value in leaves(config) if isinstance(value, str) and is_interpolation(value)]
