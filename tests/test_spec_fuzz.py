"""A property-based fuzzer over the shipped specs: whatever a mutation makes of them, `specreach
validate` answers valid or with problems that name the file (and line), never a traceback."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from specreach.cli import main

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["../../x", "..", ".", "", "1e-3", "inf", "nan", "cuda", "tpu", "${oc.env:HOME}",
                     "${train.lr}", "${nope}", "llama", "hutchinson", "Measure", "a b"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=6)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


def parent_of(config, path):
    node = config
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def mutated_spec(draw):
    """A shipped spec with a few structural mutations, or its text with a few textual ones."""
    source = draw(st.sampled_from(SPECS))
    text = source.read_text()
    if draw(st.booleans()):
        config = yaml.safe_load(text)
        for _ in range(draw(st.integers(1, 4))):
            choices = [p for p in paths(config) if p]
            if not choices:
                break
            path = draw(st.sampled_from(choices))
            parent, last = parent_of(config, path), path[-1]
            action = draw(st.sampled_from(["replace", "delete", "rename", "add", "kind-mapping", "wrap"]))
            if action == "replace":
                parent[last] = draw(values)
            elif action == "delete":
                del parent[last]
            elif action == "rename" and isinstance(parent, dict):
                new = draw(st.sampled_from([str(last).upper(), str(last).capitalize(), f"{last}x", str(last)[:-1]]))
                parent[new] = parent.pop(last)
            elif action == "add" and isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=8))] = draw(values)
            elif action == "kind-mapping" and isinstance(parent, dict):
                parent["kind"] = {"name": parent.get("kind")}
            elif action == "wrap":
                parent[last] = [parent[last]]
        return yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode()
    data = text.encode()
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["insert", "truncate", "duplicate-line", "alias", "bytes"]))
        at = draw(st.integers(0, len(data)))
        if action == "insert":
            data = data[:at] + draw(st.sampled_from([b":", b"- ", b"{", b"]", b"&a ", b"*a", b"!!python/object ",
                                                     b"\t", b"\n  ", b"'", b"? "])) + data[at:]
        elif action == "truncate":
            data = data[:at]
        elif action == "duplicate-line":
            lines = data.splitlines(keepends=True)
            if lines:
                index = draw(st.integers(0, len(lines) - 1))
                data = b"".join(lines[:index + 1] + [lines[index]] + lines[index + 1:])
        elif action == "alias":
            data = b"x: &x [1, 2]\ny: [*x, *x]\n" + data
        else:
            data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    return data


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                     HealthCheck.function_scoped_fixture])
@given(content=mutated_spec())
def test_validate_never_shows_a_traceback_and_always_names_the_file(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_bytes(content)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["validate", "--anywhere", str(path)])  # an exception here fails the test
    assert code in (0, 1)
    if code == 0:
        assert stdout.getvalue().startswith(f"{path}: valid")
    else:
        problems = [line for line in stderr.getvalue().splitlines() if line.strip()]
        assert problems
        for line in problems:
            assert line.startswith(f"{path}:"), line
        assert "Traceback" not in stderr.getvalue()


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_every_shipped_spec_validates_anywhere(path):
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["validate", "--anywhere", str(path)]) == 0
