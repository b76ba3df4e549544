"""Tiny specs for engine tests: a few steps of a tiny Llama on the built-in text."""

from __future__ import annotations

from pathlib import Path

import yaml

TINY_SPEC = {
    "name": "tiny",
    "model": {
        "kind": "llama",
        "params": {"vocab": 256, "layers": 1, "heads": 2, "context": 16},
        "sizes": {"s": {"hidden": 8, "ff": 16}, "m": {"hidden": 16, "ff": 32}},
    },
    "data": {"kind": "pydoc-text", "params": {"context": 16, "validation_size": 16}},
    "train": {"lr": 3.0e-3, "warmup_steps": 2, "batch_size": 4, "steps": 12, "seeds": [0]},
    "measure": {"estimator": "hutchinson", "probes": 2, "schedule": {"windows": 3, "steps_per_window": 2},
                "batch_size": 4},
}


def write_spec(directory: Path, spec: dict | None = None, name: str = "spec.yaml", **sections) -> Path:
    spec = dict(spec or TINY_SPEC)
    spec.update(sections)
    path = Path(directory) / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def cli(*args, timeout=600, env=None, cwd=None):
    """`specreach ARGS` in a subprocess, as a user runs it."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "specreach.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def start_cli(*args, env=None):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "specreach.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_until(condition, timeout=300, what="condition"):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def table_rows(folder: Path) -> int:
    from specreach.engine.metrics_table import read_table

    try:
        return len(read_table(Path(folder) / "metrics.csv", drop_partial_line=True))
    except (FileNotFoundError, ValueError):
        return 0


def assert_same_tables(got_path: Path, expected_path: Path) -> None:
    """Row for row, value for value (NaN where NaN)."""
    import math

    from specreach.engine.metrics_table import read_table

    got, expected = read_table(got_path), read_table(expected_path)
    assert len(got) == len(expected), (len(got), len(expected))
    for row_got, row_expected in zip(got, expected):
        assert set(row_got) == set(row_expected), row_expected["step"]
        for key, value in row_expected.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(row_got[key]), key
            else:
                assert row_got[key] == value, (row_expected["step"], key, row_got[key], value)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(store: Path, port: int):
    """A real MLflow server on 127.0.0.1 in its own process group; returns (process, url) once it answers."""
    import subprocess
    import sys
    import time
    import urllib.request

    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'server.db'}",
         "--default-artifact-root", (store / "server-artifacts").as_uri(), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.5)
    stop_process_group(server)
    raise AssertionError("mlflow server did not start")


def stop_process_group(process, sig=None) -> None:
    import os
    import signal

    try:
        os.killpg(process.pid, sig or signal.SIGTERM)
    except ProcessLookupError:
        pass
    process.wait(timeout=60)


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event in a folder's event files, as written (no deduplication): tag → [(step, value)]."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") else float(value.tensor.float_val[0])
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars
