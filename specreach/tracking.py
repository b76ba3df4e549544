"""The MLflow adapter: the only module that imports mlflow.

One :class:`Tracker` is one MLflow run. Metrics are buffered and sent with ``log_batch`` when
flushed (the engine flushes at checkpoints and at the end), so that tracking costs well under
1 % of a run and a resumed run never sends a value twice. When the tracking store cannot be
reached, the tracker warns once and turns into a no-op that remembers why (``failure``): the run
goes on, its folder keeps everything, and ``specreach sync`` (:mod:`specreach.engine.sync`)
uploads what MLflow did not get.

A SQLite store is one file that several processes (the runs of a ``processes`` or local
``ray`` executor, or two specs sharing a store) may write at once: every call on it holds an
inter-process file lock next to the database, and a new store's tables are created once, under
that lock. A lock held for more than a moment is announced, naming the process that holds it, and
waited for at most ``$SPECREACH_STORE_LOCK_SECONDS`` (default 600). Across machines, use an
MLflow server.

A URI MLflow has no store for, and a store file that is not an MLflow store (damaged, truncated),
are errors that say so; an output folder that was moved takes its SQLite store along
(:func:`relocate_store`).

MLflow's INFO lines (store creation, migrations) are not shown unless asked for
(``specreach -v``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

from filelock import FileLock, Timeout

#: Fail fast against an unreachable server instead of MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
if not os.environ.get("SPECREACH_VERBOSE"):  # `specreach -v` shows MLflow's INFO lines
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)

from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

MAX_PARAM_VALUE = 6000
MAX_PARAM_KEY = 250
SQLITE_PREFIX = "sqlite:///"


def local_tracking_uri(directory: Path) -> str:
    """A SQLite store inside the run's output directory: no server needed."""
    return f"sqlite:///{(Path(directory) / 'mlflow.db').resolve()}"


#: A workspace's default tracking store, for every spec that names none (``--tracking-uri`` and a
#: spec's ``tracking.uri`` still win): runs of many specs compare in one MLflow UI.
TRACKING_URI_VARIABLE = "SPECREACH_TRACKING_URI"


def default_tracking_uri(directory: Path) -> str:
    """``$SPECREACH_TRACKING_URI`` when set, else the SQLite store in the run's output directory."""
    return os.environ.get(TRACKING_URI_VARIABLE, "").strip() or local_tracking_uri(directory)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → ``{"train.lr": "0.001", ...}``, values as strings within MLflow's limits."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name[:MAX_PARAM_KEY]] = str(value)[:MAX_PARAM_VALUE]
    return flat


LOCK_WAIT_VARIABLE = "SPECREACH_STORE_LOCK_SECONDS"
LOCK_NOTICE_SECONDS = 2.0  # a store call holds the lock for milliseconds: longer is worth saying


class StoreBusy(TimeoutError):
    """Another process held a SQLite store's lock for longer than we wait."""


class DamagedStore(ValueError):
    """A tracking store file that MLflow cannot open."""

    @classmethod
    def of(cls, database: Path, reason: str) -> "DamagedStore":
        return cls(f"{database}: cannot be opened as an MLflow store ({reason}); it is damaged or not a store: move "
                   "it aside, and `specreach sync DIR` rebuilds MLflow's record from the run folders")


#: What SQLite (through SQLAlchemy and MLflow's migrations) says of a file that is no usable store.
DAMAGE = ("not a database", "malformed", "no such table", "file is encrypted", "Can't locate revision")


def check_tracking_uri(uri: str) -> None:
    """Refuse, before anything is written, a URI for which MLflow has no tracking store."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    try:
        _tracking_store_registry.get_store_builder(uri)
    except MlflowException:
        from urllib.parse import urlparse

        raise ValueError(f"tracking URI {uri!r}: MLflow has no tracking store for the scheme "
                         f"'{urlparse(uri).scheme}'; give a folder, sqlite:///PATH or http(s)://HOST:PORT") from None


@contextlib.contextmanager
def store_lock(uri: str | None):
    """An inter-process lock for a SQLite store (``<db>.lock``); nothing for other stores. Waiting more
    than a moment is announced with the holder; waiting longer than the limit is a StoreBusy."""
    if uri is None or not uri.startswith(SQLITE_PREFIX):
        yield
        return
    from specreach.engine.locks import holder_of

    database = Path(uri[len(SQLITE_PREFIX):])
    database.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(database) + ".lock")
    wait = float(os.environ.get(LOCK_WAIT_VARIABLE) or 600)
    try:
        lock.acquire(timeout=min(LOCK_NOTICE_SECONDS, wait))
    except Timeout:
        holder = holder_of(Path(lock.lock_file))
        warnings.warn(f"the MLflow store {database} is locked by {holder}; waiting up to {wait:g} s for it "
                      f"(${LOCK_WAIT_VARIABLE})", stacklevel=3)
        try:
            lock.acquire(timeout=max(0.0, wait - LOCK_NOTICE_SECONDS))
        except Timeout:
            raise StoreBusy(f"the MLflow store {database} stayed locked by {holder} for {wait:g} s; stop that "
                            "process, or wait for it and run again (the run folders keep everything: "
                            "`specreach sync` uploads what MLflow missed)") from None
    try:
        yield
    finally:
        lock.release()


_initialised: set[str] = set()


def initialise_store(uri: str) -> None:
    """Create a store's tables once per process, under the store's lock (two processes migrating a
    fresh SQLite file at once lose runs); a file that is no MLflow store is a DamagedStore."""
    if uri in _initialised:
        return
    with store_lock(uri):
        try:
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as error:
            database = Path(uri[len(SQLITE_PREFIX):]) if uri.startswith(SQLITE_PREFIX) else None
            reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
            if database is None or not database.is_file() or not any(sign in reason for sign in DAMAGE):
                raise  # a full disk, a locked file, a server: not the store's fault
            raise DamagedStore.of(database, reason) from None
    _initialised.add(uri)


def own_store(directory: Path, uri: str | None) -> str | None:
    """The tracking URI for an output folder that recorded ``uri``: its own SQLite store when ``uri`` is
    the store that lived inside it at another path (the folder was moved or copied, and the store
    came along), relocated to here; else ``uri``."""
    if not uri or not uri.startswith(SQLITE_PREFIX) or not (directory / "mlflow.db").is_file():
        return uri
    database = Path(uri[len(SQLITE_PREFIX):])
    here = local_tracking_uri(directory)
    if uri == here or database.name != "mlflow.db" or uri != local_tracking_uri(database.parent):
        return uri
    try:
        relocate_store(directory / "mlflow.db", database.parent, directory)
    except DamagedStore:  # said where the store is used; the folder still tracks in its own
        return here
    warnings.warn(f"{directory} was moved (or copied) from {database.parent}: it tracks in its own store "
                  f"{directory / 'mlflow.db'}, whose artifact locations now point here", stacklevel=3)
    return here


def relocate_store(database: Path, old_root: Path, new_root: Path) -> None:
    """A SQLite store that moved with its output folder: the artifact locations it records under the
    old folder now point under the new one (MLflow has no call to change them)."""
    import sqlite3

    old, new = old_root.resolve().as_uri(), new_root.resolve().as_uri()
    try:
        with store_lock(f"{SQLITE_PREFIX}{database}"), contextlib.closing(sqlite3.connect(database)) as connection:
            with connection:
                for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
                    connection.execute(f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                                       f"WHERE substr({column}, 1, ?) = ? AND substr({column}, ?, 1) IN ('', '/')",
                                       (new, len(old) + 1, len(old), old, len(old) + 1))
    except sqlite3.DatabaseError as error:
        if not any(sign in str(error) for sign in DAMAGE):
            raise OSError(f"{database}: cannot update the MLflow store ({error})") from None
        raise DamagedStore.of(database, str(error)) from None


def reachable(uri: str) -> bool:
    """Whether an http(s) tracking server answers its health check (other stores: True)."""
    if not uri.startswith(("http://", "https://")):
        return True
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


class Tracker:
    """One MLflow run, or a no-op when tracking is off or unreachable."""

    def __init__(self, client: MlflowClient | None, run_id: str | None, uri: str | None, failure: str | None = None):
        self.client, self.run_id, self.uri = client, run_id, uri
        self.failure = failure  # why tracking stopped, when it did (None: all went, or it is off)
        self._buffer: list[Metric] = []

    @property
    def active(self) -> bool:
        return self.client is not None and self.run_id is not None

    def _stop(self, what: str, error: Exception) -> None:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        self.failure = f"{what} failed ({type(error).__name__}: {first_line})"
        warnings.warn(f"MLflow {self.failure}; tracking stops for run {self.run_id}, the run folder keeps what MLflow "
                      "did not get (`specreach sync` uploads it later)", stacklevel=4)
        self.client = None

    @classmethod
    def disabled(cls) -> "Tracker":
        return cls(None, None, None)

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str, *, artifact_root: Path | None = None,
              parent_run_id: str | None = None, tags: Mapping[str, str] | None = None,
              params: Mapping[str, str] | None = None, resume_run_id: str | None = None) -> "Tracker":
        """Create (or reopen, with ``resume_run_id``) a run; on failure warn and return a no-op tracker."""
        try:
            if not reachable(uri):
                raise ConnectionError(f"no MLflow server answers at {uri}")
            initialise_store(uri)
            with store_lock(uri):
                return cls._start(uri, experiment, run_name, artifact_root, parent_run_id, tags, params, resume_run_id)
        except Exception as error:  # tracking must never take the run down
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            warnings.warn(f"MLflow tracking at {uri} is unavailable ({reason}); the run goes on and its metrics "
                          "table is still written to the output directory (`specreach sync` uploads it later)",
                          stacklevel=2)
            return cls(None, resume_run_id, uri, failure=f"unavailable at the start ({reason})")

    @classmethod
    def existing(cls, uri: str, run_id: str) -> "Tracker":
        """An existing run, as it is (not reopened)."""
        return cls(MlflowClient(tracking_uri=uri), run_id, uri)

    def delete(self) -> None:
        """Delete the run (MLflow keeps deleted runs restorable until its garbage collection)."""
        self._guard("delete_run", self.run_id)

    @classmethod
    def _start(cls, uri, experiment, run_name, artifact_root, parent_run_id, tags, params, resume_run_id) -> "Tracker":
        client = MlflowClient(tracking_uri=uri)
        if resume_run_id is not None:
            client.update_run(resume_run_id, status="RUNNING")
            return cls(client, resume_run_id, uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        else:
            experiment_id = found.experiment_id
        all_tags = dict(tags or {})
        if parent_run_id is not None:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        tracker = cls(client, run.info.run_id, uri)
        if params:
            items = [Param(k, v) for k, v in params.items()]
            for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(tracker.run_id, params=items[start:start + 100])
        return tracker

    def _guard(self, method: str, *args, **kwargs) -> None:
        """Call ``self.client.<method>``; a failure warns once and turns tracking off for this run."""
        if not self.active:
            return
        try:
            with store_lock(self.uri):
                getattr(self.client, method)(*args, **kwargs)
        except Exception as error:
            self._stop(method, error)

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self._guard("log_batch", self.run_id, params=items[start:start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._guard("log_batch", self.run_id,
                    tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        timestamp = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), timestamp, step) for k, v in metrics.items())

    def log_batch(self, metrics: list[Metric]) -> None:
        """Send these metrics in one request (one transaction in the store)."""
        self._guard("log_batch", self.run_id, metrics=metrics)

    def metric_value(self, key: str) -> float | None:
        """The latest value of a metric of this run (None when it has none or tracking is off)."""
        if not self.active:
            return None
        try:
            with store_lock(self.uri):
                return self.client.get_run(self.run_id).data.metrics.get(key)
        except Exception as error:
            self._stop("get_run", error)
            return None

    def flush(self) -> None:
        while self._buffer and self.active:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self._guard("log_batch", self.run_id, metrics=chunk)
        self._buffer.clear()

    def log_artifact(self, path: Path, subdir: str | None = None) -> None:
        self._guard("log_artifact", self.run_id, str(path), subdir)

    def finish(self, status: str = "FINISHED", message: str | None = None) -> None:
        """Flush and close the run: FINISHED, FAILED or KILLED."""
        self.flush()
        if message:
            self.set_tags({"specreach.message": message[:5000]})
        self._guard("set_terminated", self.run_id, status)


def read_runs(uri: str, experiment: str) -> list[dict]:
    """Runs of an experiment, as dicts (for tests and reports)."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return [
        {"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status, "tags": r.data.tags,
         "params": r.data.params, "metrics": r.data.metrics}
        for r in client.search_runs([found.experiment_id], max_results=1000)
    ]


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=uri)
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
