"""A property-based fuzzer over the shipped specs: whatever a mutation makes of them, `specreach
validate` answers valid or with problems that name the file (and line), never a traceback; and
over what a spec may not do however it is spelled: read the environment through interpolations
(resolvers composed from pieces), sweep values of the wrong type or given twice, sweeps and names
too large for a run or a file system."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_helpers import TINY_SPEC
from specreach.cli import main

SPECS = sorted((Path(__file__).resolve().parents[1] / "specs").glob("*.yaml"))
SECRET_VARIABLE, SECRET = "SPECREACH_FUZZ_SECRET", "fuzz-secret-4f1c"

#: Pieces an interpolation can be assembled from: references, resolvers, and text that only becomes
#: a resolver once its pieces are joined ('$' from one key, '{oc.env:…}' from another).
PIECES = ["$", "{", "}", "${name}", "${tracking.experiment}", "${train.lr}", "${nope}", "oc.env:", "oc.decode:",
          "oc.select:", "oc.create:", "env:", SECRET_VARIABLE, "'", '"', "\\", ":", ",", "${oc.env:" +
          SECRET_VARIABLE + "}", "${oc.decode:'$'}", "${oc.decode:'${tracking.experiment}{oc.env:" +
          SECRET_VARIABLE + "}'}"]
interpolations = st.lists(st.sampled_from(PIECES), min_size=1, max_size=6).map("".join)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**20, max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["../../x", "..", ".", "", "1e-3", "inf", "nan", "cuda", "tpu", "${oc.env:HOME}",
                     "${train.lr}", "${nope}", "llama", "hutchinson", "Measure", "a b"]),
    interpolations,
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


def validate_text(path: Path, *overrides: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["validate", "--anywhere", str(path), *overrides])  # an exception here fails the test
    return code, stdout.getvalue(), stderr.getvalue()


@settings(max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                               HealthCheck.function_scoped_fixture])
@given(experiment=interpolations, run_name=interpolations, as_override=st.booleans())
def test_no_interpolation_reads_the_environment_however_it_is_assembled(tmp_path_factory, experiment, run_name,
                                                                        as_override):
    from specreach.config import SpecError, load_spec

    path = tmp_path_factory.mktemp("interpolation") / "spec.yaml"
    tracking = {} if as_override else {"experiment": experiment, "run_name": run_name}
    path.write_text(yaml.safe_dump({**TINY_SPEC, "tracking": tracking}, sort_keys=False))
    overrides = [f"tracking.experiment={yaml.safe_dump(experiment, default_style=chr(39)).strip()}",
                 f"tracking.run_name={yaml.safe_dump(run_name, default_style=chr(39)).strip()}"] if as_override else []
    previous = os.environ.get(SECRET_VARIABLE)
    os.environ[SECRET_VARIABLE] = SECRET
    try:
        code, stdout, stderr = validate_text(path, *overrides)
        assert code in (0, 1) and SECRET not in stdout + stderr and "Traceback" not in stderr
        try:
            spec = load_spec(path, overrides)
        except SpecError:
            assert code == 1
            return
    finally:
        if previous is None:
            del os.environ[SECRET_VARIABLE]
        else:
            os.environ[SECRET_VARIABLE] = previous
    assert code == 0
    resolved = spec.model_dump_json()
    assert SECRET not in resolved and "${" not in resolved  # nothing spec.yaml holds is resolved again


SWEEPABLE = {"train.lr": st.one_of(st.floats(1e-5, 1.0), st.booleans(), st.integers(1, 3), st.sampled_from(
                 ["1e-3", "0.001", "fast"])),
             "train.steps": st.one_of(st.integers(6, 10**9), st.floats(6, 40), st.booleans(), st.just("12")),
             "train.weight_decay": st.one_of(st.floats(0, 1), st.integers(0, 1), st.booleans()),
             "data.params.context": st.one_of(st.integers(1, 64), st.booleans(), st.floats(1, 64), st.text(
                 "ab1.", min_size=1, max_size=300)),
             "train.warmup_steps": st.one_of(st.integers(0, 10**12), st.booleans(), st.floats(0, 5))}


@st.composite
def sweeps(draw):
    keys = draw(st.lists(st.sampled_from(sorted(SWEEPABLE)), min_size=1, max_size=4, unique=True))
    return {key: draw(st.lists(SWEEPABLE[key], min_size=1, max_size=draw(st.sampled_from([2, 3, 3, 30, 120]))))
            for key in keys}


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                               HealthCheck.data_too_large,
                                                                               HealthCheck.function_scoped_fixture])
@given(sweep=sweeps(), size_name=st.one_of(st.text("abc", min_size=1, max_size=8), st.text("abc", max_size=300)))
def test_sweep_values_are_typed_distinct_and_counted_and_names_fit(tmp_path_factory, sweep, size_name):
    from specreach.config import load_spec
    from specreach.engine.runs import TrackingTarget, expand, fingerprint
    from specreach.spec import MAX_FOLDER_NAME, MAX_RUNS

    path = tmp_path_factory.mktemp("sweep") / "spec.yaml"
    model = {**TINY_SPEC["model"], "sizes": {size_name: {"hidden": 8, "ff": 16}}}
    path.write_text(yaml.safe_dump({**TINY_SPEC, "model": model, "sweep": sweep}, sort_keys=False))
    code, stdout, stderr = validate_text(path)
    assert code in (0, 1) and "Traceback" not in stderr
    if code == 1:
        assert all(line.startswith(f"{path}:") for line in stderr.splitlines() if line.strip()), stderr
        return
    spec = load_spec(path)
    runs = expand(spec, path.parent, TrackingTarget.off())
    assert len(runs) <= MAX_RUNS and all(len(run.name) <= MAX_FOLDER_NAME for run in runs)
    assert len({fingerprint(run) for run in runs}) == len(runs)  # no computation runs twice under two names
    for key, values in spec.sweep.items():
        assert not any(isinstance(value, bool) for value in values), (key, values)  # each key takes numbers
