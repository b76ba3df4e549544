"""Sweep throughput of the executors, in one process: the same 8-run CPU sweep through

1. ``local`` (one run after another, in this process): the baseline;
2. ``processes`` with 2 workers;
3. ``ray`` on a local instance with 2 CPUs (its start-up is timed apart: once per sweep, or
   never on a running cluster).

Every run uses 1 torch thread (``train.threads: 1``) and tracks to a SQLite MLflow store, as a
user's sweep would; by default the 8 runs are seeds of one size and each takes about 15 s. Each
worker process first imports torch, opacus, timm and MLflow (about 5 s, once per worker), so
sweeps of longer runs gain more from workers and sweeps of shorter ones less (``--steps 300``);
runs of unequal lengths (``--sizes two``) can leave a worker idle at the end. Timed: the executor running the 8 runs, from a clean output folder each
time (the spec's parent run and the end-of-sweep plots, the same for every executor, are left
out). Printed: wall time, speed-up over ``local``, and the overhead per run — the wall time
beyond a perfect split of the local time over the 2 slots, per run: (2·T − T_local) / 8.

Goals: ≥ 1.8× for 2 workers on 2 cores; Ray's overhead per run < 2 s.

    python benchmarks/sweep_throughput.py [--steps 800] [--sizes one|two] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # single node, on the loopback interface

from specreach.config import load_spec  # noqa: E402
from specreach.engine import Engine  # noqa: E402

SPEC = Path(__file__).resolve().parents[1] / "specs" / "quickstart.yaml"
EXECUTORS = {
    "local": "execution={kind: local}",
    "processes, 2 workers": "execution={kind: processes, params: {workers: 2}}",
    "ray, local instance, 2 CPUs": "execution={kind: ray, params: {address: null, local_cpus: 2, cpus_per_run: 1}}",
}


SIZES = {
    # 8 seeds of one size: every run takes as long, so the times show the executors, not the order of runs.
    "one": ("model.sizes={medium: {hidden: 48, ff: 128}}", 8),
    # 2 sizes × 4 seeds: runs of two lengths; a greedy executor can end with one worker idle.
    "two": ("model.sizes={small: {hidden: 32, ff: 86}, medium: {hidden: 48, ff: 128}}", 4),
}


def sweep(steps: int, sizes: str, executor: str, output: Path) -> Engine:
    """8 runs of a small Llama on the built-in text, quick-start measurement."""
    model, seeds = SIZES[sizes]
    return Engine(load_spec(SPEC, [
        f"output={output}", model, "train.lr_per_size={}", f"train.steps={steps}", f"train.seeds={seeds}",
        "train.threads=1",
        "measure.schedule={windows: 4, steps_per_window: 2}", executor]))


def timed(engine: Engine) -> float:
    runs = engine.runs()
    start = time.perf_counter()
    results = engine.executor().run(runs, threading.Event(), {})
    seconds = time.perf_counter() - start
    failed = [r for r in results if r.status != "FINISHED"]
    assert len(results) == len(runs) == 8 and not failed, failed
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--sizes", choices=sorted(SIZES), default="one",
                        help="one: 8 seeds of one size (default); two: 2 sizes × 4 seeds")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="specreach-sweep-"))
    times: dict[str, list[float]] = {name: [] for name in EXECUTORS}
    startup: list[float] = []
    for repeat in range(args.repeats):
        for index, (name, executor) in enumerate(EXECUTORS.items()):
            engine = sweep(args.steps, args.sizes, executor, workdir / f"{repeat}-{index}")
            engine.root.mkdir(parents=True)
            if name.startswith("ray"):
                import ray

                start = time.perf_counter()
                ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")  # the executor uses it
                startup.append(time.perf_counter() - start)
                try:
                    times[name].append(timed(engine))
                finally:
                    ray.shutdown()
            else:
                times[name].append(timed(engine))
    shutil.rmtree(workdir, ignore_errors=True)
    local = min(times["local"])
    shape = "1 Llama size × 8 seeds" if args.sizes == "one" else "2 Llama sizes × 4 seeds"
    print(f"8 runs ({shape}, {args.steps} steps, quick-start measurement, SQLite tracking), "
          f"1 torch thread per run, {os.cpu_count()} cores; best of {args.repeats}")
    print(f"{'executor':<30} {'seconds':>8} {'speed-up':>9} {'overhead/run':>13}")
    for name, values in times.items():
        best = min(values)
        overhead = f"{(2 * best - local) / 8:+.2f} s" if name != "local" else "-"
        print(f"{name:<30} {best:8.1f} {local / best:8.2f}× {overhead:>13}")
    print(f"ray local instance start-up (once per sweep, not in the times above): {min(startup):.1f} s")
    print("goals: processes ≥ 1.80× with 2 workers; ray overhead per run < 2 s")


if __name__ == "__main__":
    main()
