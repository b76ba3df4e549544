"""``specreach sync DIR``: upload to MLflow what a run directory holds and the tracking store did not
get — a server that was down when the runs started, or died while they trained.

The run folders are the record (:mod:`specreach.engine.run_folder`): each run's metrics table,
its status and what MLflow held of it. Syncing sends each run the rows its MLflow run lacks
(``specreach.rows`` counts the rows MLflow holds, exactly, as the runs themselves keep it), its
artifacts and its final status, and the parent run the spec's artifacts and status. Runs MLflow
does not know (the store was never reached, or it is another store) are created, and which run
is which is kept in ``sync.json`` beside the runs, so syncing twice sends nothing twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from specreach.engine.locks import FolderLock
from specreach.engine.metrics_table import read_table
from specreach.engine.run_folder import RunFolder, read_json, write_atomically

ENDED = ("FINISHED", "FAILED", "KILLED")


def _root_and_runs(directory: Path) -> tuple[Path, list[RunFolder]]:
    if (directory / "runs").is_dir():
        return directory, [RunFolder(p) for p in sorted((directory / "runs").iterdir()) if p.is_dir()]
    if (directory / "status.json").exists() or (directory / "metrics.csv").exists():
        return directory.parent.parent, [RunFolder(directory)]
    raise FileNotFoundError(f"{directory} is neither a spec's output directory (with runs/) nor a run's folder "
                            "(with status.json): give the directory printed by `specreach run`")


def sync(directory: str | Path, tracking_uri: str | None = None) -> Iterator[str]:
    """Sync every run under ``directory``; yields a line per run saying what was sent."""
    from specreach.engine.sinks import MlflowSink
    from specreach.tracking import (
        Tracker, check_tracking_uri, initialise_store, local_tracking_uri, own_store, reachable,
    )

    directory = Path(directory)
    root, folders = _root_and_runs(directory)
    engine_state = read_json(root / "engine.json", "delete it; sync then starts a new parent run")
    uri = tracking_uri or own_store(root, engine_state.get("tracking_uri")) or local_tracking_uri(root)
    spec = _spec(root)
    experiment = (spec.get("tracking") or {}).get("experiment") or spec.get("name") or root.name
    check_tracking_uri(uri)
    if not reachable(uri):
        raise ConnectionError(f"no MLflow server answers at {uri}: start it (or give --tracking-uri URI of one that "
                              "runs); nothing was sent, the run folders keep everything")
    with FolderLock(root, "output folder"):
        initialise_store(uri)
        state_path = root / "sync.json"
        state = read_json(state_path, "delete it; sync then uploads the runs again as new MLflow runs")
        known = state.setdefault(uri, {"runs": {}})

        def save() -> None:
            write_atomically(state_path, json.dumps(state, indent=2))

        parent_id = _existing(uri, engine_state.get("parent_run_id") if engine_state.get("tracking_uri") in
                              (None, uri) else None) or _existing(uri, known.get("parent"))
        if parent_id is None:
            parent = Tracker.start(uri, experiment, (spec.get("tracking") or {}).get("run_name") or root.name,
                                   artifact_root=root / "mlartifacts", tags={"specreach.spec": root.name,
                                                                             "specreach.synced": "true"})
            _require(parent, uri)
            parent_id = parent.run_id
        known["parent"] = parent_id
        save()

        statuses = []
        for folder in folders:
            status = folder.read_status()
            if not status:
                yield f"{folder.path.name}: nothing recorded, skipped"
                continue
            description = folder.read_description()
            recorded = status.get("tracking") or {}
            # A run id is unique to its run: where the store has it, it is this run's, whatever the
            # store was called when the run recorded it (a folder moved with its SQLite store).
            run_id = _existing(uri, recorded.get("run_id") or status.get("run_id")) \
                or _existing(uri, known["runs"].get(folder.path.name))
            if run_id is None:
                tracker = Tracker.start(uri, experiment, folder.path.name, artifact_root=root / "mlartifacts",
                                        parent_run_id=parent_id, tags=_tags(description),
                                        params=_params(description))
                _require(tracker, uri)
            else:
                tracker = Tracker.existing(uri, run_id)
            known["runs"][folder.path.name] = tracker.run_id
            save()
            rows = read_table(folder.metrics, drop_partial_line=True) if folder.metrics.exists() else []
            sink = MlflowSink(tracker)
            sink.catch_up(rows)
            before = sink.held
            sink.flush()
            _require(tracker, uri)
            for artifact in (folder.metrics, folder.spectra):
                if artifact.exists():
                    tracker.log_artifact(artifact)
            if status.get("status") in ENDED:
                tracker.finish(status["status"], status.get("message") or None)
            _require(tracker, uri)
            statuses.append(status.get("status"))
            folder.write_status(**{**status, "run_id": tracker.run_id,
                                   "tracking": {"uri": uri, "run_id": tracker.run_id, "rows": len(rows),
                                                "complete": True}})
            yield (f"{folder.path.name}: sent {len(rows) - before} of {len(rows)} rows (MLflow had {before}), "
                   f"status {status.get('status')}")

        parent = Tracker.existing(uri, parent_id)
        for path in (root / "spec.yaml",):
            if path.exists():
                parent.log_artifact(path)
        for plot in sorted((root / "plots").glob("*.png")) if (root / "plots").is_dir() else ():
            parent.log_artifact(plot, "plots")
        if statuses and all(s in ENDED for s in statuses):
            failed = statuses.count("FAILED")
            parent.finish("KILLED" if "KILLED" in statuses else "FAILED" if failed == len(statuses) else "FINISHED")
        _require(parent, uri)
        yield f"parent run {parent_id} in {uri}"


def _require(tracker, uri: str) -> None:
    if tracker.failure is not None or tracker.run_id is None:
        raise ConnectionError(f"MLflow at {uri}: {tracker.failure or 'no run'}; nothing is lost: sync again later")


def _existing(uri: str, run_id: str | None) -> str | None:
    """``run_id`` if the store at ``uri`` has that run (not deleted)."""
    if not run_id:
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        return None
    return run_id if run.info.lifecycle_stage != "deleted" else None


def _spec(root: Path) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load((root / "spec.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _tags(description: dict[str, Any]) -> dict[str, str]:
    skip = {"name", "steps", "sweep", "run_spec", "fingerprint", "code_version"}
    return {key: str(value) for key, value in description.items() if key not in skip}


def _params(description: dict[str, Any]) -> dict[str, str]:
    from specreach.tracking import flatten

    run_spec = dict(description.get("run_spec") or {})
    for key in ("tracking", "output_dir"):
        run_spec.pop(key, None)
    return flatten(run_spec)
