"""Reading a spec file safely: UTF-8 text, YAML whose shape is bounded before anything is built
from it, no duplicate keys, and the line of every key for error messages.

A YAML file is checked event by event (a linear pass that builds nothing) before it is composed:

- nesting deeper than :data:`MAX_DEPTH` is refused (PyYAML's composer recurses per level);
- an alias that refers to the collection it sits in (a recursive structure) is refused;
- aliases may repeat a part of the file, but the expanded document may hold at most
  :data:`MAX_VALUES` values: a "billion laughs" file is refused before it is expanded.

Everything here reports :class:`Problem`\\ s with the file and line; nothing raises a raw error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

MAX_DEPTH = 32  # a spec is a few levels deep; PyYAML recurses once per level
MAX_VALUES = 20_000  # values of the document with every alias expanded (a spec has a few hundred)

KeyPath = tuple[Any, ...]


@dataclass(frozen=True)
class Problem:
    source: str  # the file name, or "override 'KEY=VALUE'"
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.source if self.line is None else f"{self.source}:{self.line}"
        return f"{where}: {printable(self.path) or '(spec)'}: {printable(self.message)}"


def printable(text: str) -> str:
    """One line of visible text: control characters of a key or value shown escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


class SpecError(ValueError):
    """A spec that cannot be used; ``problems`` lists every issue found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(dict.fromkeys(problems))
        super().__init__("\n".join(str(p) for p in self.problems))


def read_text(path: Path) -> str:
    """The file's text, or a SpecError naming the file (missing, unreadable, empty, not UTF-8)."""
    source = str(path)
    if path.is_dir():
        resumable = (path / "spec.yaml").is_file() and (path / "engine.json").is_file()
        hint = f"; to continue its runs: specreach run --resume {path}" if resumable else \
            f"; give the YAML file itself (e.g. {path / 'spec.yaml'})"
        raise SpecError([Problem(source, None, "", f"is a folder, not a spec file{hint}")])
    if not path.is_file():
        raise SpecError([Problem(source, 1, "", "no such spec file; give the path of a YAML spec")])
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SpecError([Problem(source, 1, "", f"cannot read the file: {error.strerror or error}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise SpecError([Problem(source, line, "", f"not UTF-8 text (byte 0x{data[error.start]:02x} at column "
                                 f"{column}); save the file as UTF-8")]) from None
    if not text.strip():
        raise SpecError([Problem(source, 1, "", "the spec file is empty; see specs/quickstart.yaml for an example")])
    return text


def _yaml_problem(source: str, error: yaml.YAMLError) -> Problem:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    problem = getattr(error, "problem", None) or str(error)
    return Problem(source, line, "", f"malformed YAML: {problem}")


def check_shape(text: str, source: str) -> None:
    """Refuse deep nesting, recursive aliases and alias bombs before the YAML is composed."""
    depth = 0
    values = 0  # values of the expanded document so far
    open_collections: list[tuple[str | None, int]] = []  # (anchor, values before it started)
    anchor_sizes: dict[str, int] = {}
    try:
        for event in yaml.parse(text):
            line = event.start_mark.line + 1
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError([Problem(source, line, "", f"nested deeper than {MAX_DEPTH} levels; a spec "
                                             "needs a handful")])
                open_collections.append((event.anchor, values))
                values += 1
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
                anchor, before = open_collections.pop()
                if anchor is not None:
                    anchor_sizes[anchor] = values - before
            elif isinstance(event, yaml.ScalarEvent):
                values += 1
                if event.anchor is not None:
                    anchor_sizes[event.anchor] = 1
            elif isinstance(event, yaml.AliasEvent):
                if any(anchor == event.anchor for anchor, _ in open_collections):
                    raise SpecError([Problem(source, line, "", f"alias *{event.anchor} refers to the collection it "
                                             "is part of (a recursive structure); a spec must be a tree")])
                values += anchor_sizes.get(event.anchor, 1)
            if values > MAX_VALUES:
                raise SpecError([Problem(source, line, "", f"aliases expand this file to more than {MAX_VALUES:,} "
                                         "values; a spec holds a few hundred (an alias bomb?)")])
    except yaml.YAMLError as error:
        raise SpecError([_yaml_problem(source, error)]) from None


def compose(text: str, source: str) -> yaml.Node | None:
    check_shape(text, source)
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise SpecError([_yaml_problem(source, error)]) from None


def line_map(root: yaml.Node | None, source: str) -> tuple[dict[KeyPath, int], list[Problem]]:
    """1-based line of every key path (list items by index), and the duplicate or non-scalar keys
    (problems reported with everything else wrong with the spec, not first and alone)."""
    lines: dict[KeyPath, int] = {}
    problems: list[Problem] = []

    def walk(node, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if not isinstance(key, yaml.ScalarNode):
                    problems.append(Problem(source, line, ".".join(map(str, path)),
                                            "a key must be a plain name, not a list or mapping"))
                    continue
                if key.value == "<<":  # a merge key: its mapping's keys join this one
                    walk(value, path)
                    continue
                child = (*path, key.value)
                if key.value in seen:
                    problems.append(Problem(source, line, ".".join(map(str, child)),
                                            f"duplicate key (also on line {seen[key.value]}); YAML would keep only "
                                            "the last silently: keep one"))
                    for kept in [p for p in lines if p[:len(child)] == child]:  # the data holds the last one
                        del lines[kept]
                seen[key.value] = line
                lines.setdefault(child, line)
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines.setdefault((*path, index), item.start_mark.line + 1)
                walk(item, (*path, index))

    if root is not None:
        walk(root, ())
    return lines, problems


def line_for(lines: dict[KeyPath, int], path: KeyPath) -> int:
    """The line of ``path``, or of its nearest parent the file has (1 when none)."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
        as_text = tuple(str(part) for part in path[:end])
        if as_text in lines:
            return lines[as_text]
    return 1


def load(path: Path) -> tuple[Any, dict[KeyPath, int], str, list[Problem]]:
    """The file's YAML data, the line of every key, the source name for messages, and the problems of
    its keys (duplicates: the data keeps the last)."""
    source = str(path)
    text = read_text(path)
    root = compose(text, source)
    lines, problems = line_map(root, source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:  # a list or mapping as a key: the problems found say where
        raise SpecError(problems or [_yaml_problem(source, error)]) from None
    except RecursionError:  # guarded by check_shape; kept so that no input can raise it raw
        raise SpecError([Problem(source, 1, "", "nested too deeply; a spec needs a handful of levels")]) from None
    return data, lines, source, problems
