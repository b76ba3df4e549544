"""One run trained data-parallel over local processes: ``train.distributed: {processes: N}``.

The run's process (whichever executor runs it) launches N ranks through torch.distributed's elastic
launcher (:func:`torch.distributed.launcher.api.elastic_launch`, what ``torchrun`` uses) and waits for
them. Each rank joins the process group (gloo on CPU; NCCL with GPU ``local rank`` when train.device is
cuda: the backend is the only difference) and runs a :class:`~specreach.engine.session.RunSession`:
the model wrapped in DistributedDataParallel, its equal shard of each global batch, the LNP monitor
measuring the global batches, rank 0 alone writing the run folder, checkpoints, metrics and MLflow.

- The launcher holds the run folder's lock while its ranks run (and across relaunches).
- A stop (Ctrl-C, SIGTERM, the executor's stop) reaches the ranks as a ``stop`` file in the run folder,
  which they agree on at each step boundary: the run checkpoints and ends KILLED, as in one process.
  The ranks ignore SIGINT themselves (a terminal's Ctrl-C reaches the whole process group); a second
  Ctrl-C stops at once: the launcher tears the ranks down and the last checkpoint stays as it was.
- A rank that dies (killed, out of memory, a crash in native code) takes the run's other ranks down
  with it; the launcher starts them all again from the last checkpoint, up to ``RELAUNCHES`` times,
  then marks the run FAILED (crashed: ``--resume`` retries it). Nothing is recorded twice: a resumed
  run rewinds its sinks to the checkpoint.
- Progress: rank 0 draws the bar when the run draws one; executors that collect progress events get
  none from a data-parallel run (the ranks are other processes).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from typing import Callable

import torch

from specreach.engine.locks import FolderBusy, FolderLock
from specreach.engine.runs import RunResult, RunSpec

STOP_FILE = "stop"
RELAUNCHES = 2  # times the ranks are started again after one of them died
POLL_SECONDS = 0.2


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def check_devices(run: RunSpec) -> torch.device:
    """The device type the ranks train on; a cuda run needs a GPU for each process."""
    from specreach.engine.training import resolve_device

    processes = run.train.distributed.processes
    device = resolve_device(run.train.device)
    if device.type == "cuda" and torch.cuda.device_count() < processes:
        raise ValueError(f"train.distributed.processes is {processes} with train.device {run.train.device}, but this "
                         f"machine shows {torch.cuda.device_count()} GPU(s) (CUDA_VISIBLE_DEVICES="
                         f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): each process takes a GPU of its own. "
                         "Give at most that many processes, or train.device: cpu (gloo)")
    return device


def launch(run: RunSpec, should_stop: Callable[[], bool], *, threads: int, progress_bar: bool = True,
           report: Callable[[dict], None] | None = None) -> RunResult:
    """Train ``run`` over its processes and return rank 0's result."""
    from specreach.engine.session import RunSession

    folder = run.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FolderLock(folder, "run folder"):
            try:
                device = check_devices(run)
            except ValueError as error:  # recorded as any run's bad input is
                return RunSession(run, lock=False).finish("FAILED", str(error))
            return _launch_until_done(run, should_stop, device, threads, progress_bar)
    except FolderBusy as error:
        return RunResult(run.name, "FAILED", None, folder, str(error))


def _launch_until_done(run: RunSpec, should_stop, device: torch.device, threads: int,
                       progress_bar: bool) -> RunResult:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from specreach.engine.executors import record_crash

    stop_file = run.output_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)  # left by an earlier stop
    per_rank = max(1, (run.train.threads or threads) // run.train.distributed.processes)
    watcher_done = threading.Event()

    def watch() -> None:  # the executor's stop, passed on to the ranks as a file they look for
        while not watcher_done.wait(POLL_SECONDS):
            if should_stop():
                stop_file.touch()
                return

    watcher = threading.Thread(target=watch, name="specreach-stop-watcher", daemon=True)
    watcher.start()
    deaths: list[str] = []
    try:
        while True:
            try:
                results = _elastic_launch(run, per_rank, progress_bar)
            except ChildFailedError as error:
                rank, first = error.get_first_failure()
                why = f"signal {first.signal_name()}" if first.exitcode < 0 else f"exit code {first.exitcode}"
                deaths.append(f"rank {rank} died ({why})")
                if len(deaths) <= RELAUNCHES and not stop_file.exists():
                    continue  # all ranks again, from the last checkpoint
                return record_crash(run, f"a rank of its {run.train.distributed.processes} processes died "
                                         f"{len(deaths)} time{'s' * (len(deaths) > 1)} ({'; '.join(deaths)})")
            return results[0]
    except KeyboardInterrupt:  # a second Ctrl-C: the launcher tore the ranks down as it left
        record_stop(run, "stopped at once; `specreach run --resume` continues from the last checkpoint")
        raise
    finally:
        watcher_done.set()
        watcher.join()
        stop_file.unlink(missing_ok=True)


def _elastic_launch(run: RunSpec, threads: int, progress_bar: bool) -> dict[int, RunResult]:
    """One launch of the ranks on this machine (a c10d rendezvous on a free loopback port)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=run.train.distributed.processes, run_id=uuid.uuid4().hex,
        rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.2,
        start_method="spawn",
        # SIGINT and SIGTERM keep the engine's meaning (the first stops at a step boundary, a second at
        # once); torch's own handlers would tear the ranks down on the first.
        signals_to_handle="SIGHUP,SIGQUIT", shutdown_timeout=5,
    )
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGHUP, signal.SIGQUIT)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        return elastic_launch(config, rank_main)(run, threads, progress_bar)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def rank_main(run: RunSpec, threads: int, progress_bar: bool) -> RunResult:
    """One rank (a process the elastic launcher started): join the group, train, leave."""
    import torch.distributed as dist

    from specreach.engine.session import RunSession

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher passes a stop on through the stop file
    torch.set_num_threads(threads)
    device = check_devices(run)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend_for(device))
    rank = dist.get_rank()
    stop_file = run.output_dir / STOP_FILE
    looked, stopped = [0.0], [False]

    def should_stop() -> bool:  # a stat five times a second at most
        now = time.monotonic()
        if not stopped[0] and now - looked[0] >= POLL_SECONDS:
            looked[0] = now
            stopped[0] = stop_file.exists()
        return stopped[0]

    try:
        return RunSession(run, should_stop, progress_bar=progress_bar and rank == 0, lock=False).run()
    finally:
        # Leaving closes this rank's connections: a rank still waiting in a collective on it gets an error.
        dist.destroy_process_group()


def record_stop(run: RunSpec, message: str) -> None:
    """The ranks were stopped at once: KILLED in the run folder and in MLflow (rank 0 could not say so)."""
    from specreach.engine.run_folder import RunFolder

    folder = RunFolder(run.output_dir)
    try:
        status = folder.read_status()
    except ValueError:  # a damaged status.json: what it said is lost anyway
        status = {}
    folder.write_status(**{**status, "status": "KILLED", "message": message})
    if run.tracking.enabled and status.get("run_id"):
        from specreach.tracking import Tracker

        Tracker.start(run.tracking.uri, run.tracking.experiment, run.name,
                      resume_run_id=status["run_id"]).finish("KILLED", message)
