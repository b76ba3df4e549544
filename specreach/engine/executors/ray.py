"""The ``ray`` executor: each run is a Ray task with its own CPUs and GPUs.

- ``address: null`` starts a local Ray instance for this execution (and stops it at the end);
  ``auto``, ``host:port`` or ``ray://host:port`` join an existing cluster. An address where nothing
  listens is an error within seconds that names it (Ray itself retries for minutes).
- Runs write checkpoints and metrics under the spec's output folder, which on a cluster of
  several machines must be storage they all share; they track to the spec's MLflow URI (a
  server on a cluster: a SQLite file is only safe on one machine).
- A task whose worker or node dies is retried by Ray up to ``max_retries`` times; the retry
  resumes from the run's last checkpoint, so no row is recorded twice.
- A run's progress lines and warnings go through a Ray queue to the driver, which prints them in
  order above the sweep's bar.
- Ctrl-C writes a ``stop`` file into each running run's folder, which the task looks for at step
  boundaries, five times a second: runs stop with a checkpoint, as with the other executors. (A
  file, not a Ray call: a task that waits on Ray gives its CPUs back, and Ray would start another
  task on them.)

Ray is an optional dependency: ``pip install 'specreach[ray]'``.
"""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, ConfigDict, Field

from specreach.engine.executors import Executor, Plan, record_crash, run_guarded

POLL_SECONDS = 0.2  # how often a task looks for its stop file (a stat: cheap, even on NFS)
STOP_FILE = "stop"
CONNECT_SECONDS = 10.0
CLIENT_PORT, CLUSTER_PORT = 10001, 6379  # Ray's defaults: Ray Client (ray://), the cluster's GCS


class RayParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    address: str | None = Field(None, description=(
        "null: start a local Ray instance; 'auto', 'host:port' or 'ray://host:port': join that cluster."))
    cpus_per_run: float = Field(1, gt=0, description="CPUs Ray reserves for each run (its torch threads).")
    gpus_per_run: float = Field(0, ge=0, description=(
        "GPUs Ray reserves for each run (use train.device: auto). A run trained data-parallel on GPUs "
        "(train.distributed.processes N, device cuda) needs N: one per process."))
    max_retries: int = Field(2, ge=0, description=(
        "Times Ray starts a run again after its worker or node died; it resumes from its last checkpoint."))
    local_cpus: int | None = Field(None, ge=1, description="CPUs of a local instance (address null; default: all).")


def import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("execution kind 'ray' needs Ray: pip install 'specreach[ray]' (or pip install ray)") from None
    return ray


def check_listening(address: str) -> None:
    """A ConnectionError naming ``address`` unless something accepts connections there (``auto`` is
    found by Ray itself)."""
    import socket

    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, separator, port = target.rpartition(":")
    if not separator:
        host, port = target, str(CLIENT_PORT if address.startswith("ray://") else CLUSTER_PORT)
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS):
            return
    except TimeoutError:
        reason = f"no answer within {CONNECT_SECONDS:g} s"
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
    raise ConnectionError(f"execution.params.address {address}: no Ray cluster answers there ({reason}); start one "
                          f"(`ray start --head --port {CLUSTER_PORT}`), or give the address of a running cluster "
                          "(or null for a local instance)")


def task_resources(run, params: RayParams) -> dict:
    """What Ray reserves for a run's task: ``cpus_per_run`` CPUs (shared by the ranks of a data-parallel run)
    and ``gpus_per_run`` GPUs, which must give each rank of a run trained on GPUs one of its own."""
    processes = run.train.distributed.processes
    if processes > 1 and run.train.device.startswith("cuda") and params.gpus_per_run < processes:
        raise ValueError(f"run {run.name} trains data-parallel over {processes} processes with train.device "
                         f"{run.train.device}, one GPU each, but execution.params.gpus_per_run is "
                         f"{params.gpus_per_run:g}: set gpus_per_run: {processes} (or train.device: cpu)")
    return {"num_cpus": params.cpus_per_run, "num_gpus": params.gpus_per_run}


def run_task(run, threads: int, events=None):
    """The body of a run's Ray task (module-level, so that workers import it by name); its progress
    goes into ``events``, a Ray queue the driver reads."""
    stop_file = run.output_dir / STOP_FILE
    last = {"looked": 0.0, "stop": False}

    def should_stop() -> bool:
        now = time.monotonic()
        if not last["stop"] and now - last["looked"] >= POLL_SECONDS:
            last["looked"] = now
            last["stop"] = stop_file.exists()
        return last["stop"]

    return run_guarded(run, should_stop, threads=threads, progress_bar=False,
                       report=events.put if events is not None else None)


class RayExecutor(Executor):
    """Runs as Ray tasks, on a local instance or a cluster."""

    name = "ray"
    Params = RayParams

    def run(self, runs, stop, done=None):
        params = self.params
        if params.address is None:
            # A local instance serves this machine only: Ray's single-node mode keeps it on the loopback
            # interface (read when Ray is imported, so it applies where this is the first use of Ray).
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Runs send their progress through a queue (below): what Ray forwards of the workers' output (a
        # crash's last words) comes as it was printed, without colour codes or "[repeated Nx]" summaries.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        for run in runs:  # before Ray starts: a run that cannot get its GPUs is bad input
            task_resources(run, params)
        ray = import_ray()
        plan = Plan(runs, done)
        started_here = not ray.is_initialized()
        if started_here:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if params.address is None:
                # Errors only: Ray's notices about a cluster (its token authentication) do not concern one that
                # lives and dies with this sweep on the loopback interface.
                ray.init(num_cpus=params.local_cpus, include_dashboard=False, logging_level="error")
            else:
                check_listening(params.address)
                ray.init(address=params.address, logging_level="warning")
        try:
            # Every run's task asks for the same resources (checked per run above): one set of options, so
            # that Ray reuses a finished task's worker for the next run.
            task = ray.remote(run_task).options(max_retries=params.max_retries, retry_exceptions=False,
                                                num_cpus=params.cpus_per_run, num_gpus=params.gpus_per_run)
            from ray.util.queue import Queue

            events = Queue(actor_options={"num_cpus": 0})

            def show_progress() -> None:
                """The runs' events so far, in the order they were put."""
                for event in events.get_nowait_batch(events.qsize()):
                    plan.progress.report(event)

            threads = max(1, int(params.cpus_per_run))
            in_flight: dict = {}
            flagged = False
            while True:
                if stop.is_set():
                    if not flagged:
                        for run in in_flight.values():
                            (run.output_dir / STOP_FILE).touch()
                        flagged = True
                else:
                    while (run := plan.next_ready()) is not None:
                        run.output_dir.mkdir(parents=True, exist_ok=True)
                        (run.output_dir / STOP_FILE).unlink(missing_ok=True)  # left by an earlier Ctrl-C
                        in_flight[task.remote(run, threads, events)] = run
                if not in_flight:
                    break
                finished, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
                show_progress()  # a finished task put its last events before it returned: they come first
                for ref in finished:
                    run = in_flight.pop(ref)
                    (run.output_dir / STOP_FILE).unlink(missing_ok=True)
                    try:
                        plan.record(ray.get(ref))
                    except ray.exceptions.RayError as error:  # retries exhausted: the worker or node died
                        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                        plan.record(record_crash(run, f"its Ray task died {params.max_retries + 1} times "
                                                      f"({type(error).__name__}: {first_line})"))
            events.shutdown()
        finally:
            if started_here:
                ray.shutdown()
        return plan.ordered_results()
