"""The engine's overhead against a bare PyTorch loop, in one process.

Same model (the quick start's medium Llama), same data (built-in text), same optimizer and
number of steps. Prints wall time and the ratio to the bare loop for:

1. a bare PyTorch loop (data from the same source, AdamW with warmup, final evaluation);
2. the engine with measurement and tracking off;
3. the engine with tracking on (a local SQLite MLflow store), measurement off;
4. the engine with the quick start's measurement schedule, tracking on — and the share of
   wall time spent measuring.

    python benchmarks/engine_overhead.py [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from specreach.config import load_spec
from specreach.engine.session import run_session
from specreach.engine.training import build_data, evaluate, warmup_factor
from specreach.engine.runs import TrackingTarget, expand
from specreach.engine.tasks import loss_for
from specreach.models.parameterization import build_model
from specreach.tracking import local_tracking_uri

SPEC = Path(__file__).resolve().parents[1] / "specs" / "quickstart.yaml"


def bare_loop(run) -> None:
    data = build_data(run)
    info, pool = data.info(), data.validation_pool()
    loss_fn = loss_for(info)
    model = build_model(run.recipe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.train.lr, betas=run.train.betas,
                                  weight_decay=run.train.weight_decay, eps=run.train.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(run.train.warmup_steps))
    torch.manual_seed(run.seed)
    batches = data.train_batches(run.train.batch_size, run.train.data_seed)
    for _ in range(run.train.steps):
        inputs, targets = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        scheduler.step()
    evaluate(model, loss_fn, pool, run.train.batch_size, torch.device("cpu"), torch.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="specreach-bench-"))
    spec = load_spec(SPEC, [f"train.steps={args.steps}", "model.sizes={medium: {hidden: 64, ff: 172}}",
                            "train.lr_per_size={}"])
    uri = local_tracking_uri(workdir)
    target = TrackingTarget(enabled=True, uri=uri, experiment="bench", artifact_root=workdir / "artifacts")
    base = expand(spec, workdir, target)[0]
    variants = {
        "measurement off, tracking off": base.model_copy(update={
            "measure": base.measure.model_copy(update={"enabled": False}),
            "tracking": target.model_copy(update={"enabled": False})}),
        "measurement off, tracking on": base.model_copy(update={
            "measure": base.measure.model_copy(update={"enabled": False})}),
        "quick-start schedule, tracking on": base,
    }
    from specreach.tracking import Tracker

    Tracker.start(uri, "bench", "warm-up")  # create the SQLite store outside the timings

    times: dict[str, list[float]] = {"bare PyTorch loop": [], **{name: [] for name in variants}}
    for repeat in range(args.repeats):
        start = time.perf_counter()
        bare_loop(base)
        times["bare PyTorch loop"].append(time.perf_counter() - start)
        for name, run in variants.items():
            run = run.model_copy(update={"output_dir": workdir / f"{repeat}-{len(times[name])}-{hash(name)}"})
            start = time.perf_counter()
            result = run_session(run)
            times[name].append(time.perf_counter() - start)
            assert result.status == "FINISHED", result.message

    bare = min(times["bare PyTorch loop"])
    print(f"{args.steps} steps of the quick start's medium Llama, batch {base.train.batch_size}, "
          f"context {base.recipe.params['context']}; best of {args.repeats}, torch threads {torch.get_num_threads()}")
    print(f"{'variant':<40} {'seconds':>8} {'× bare':>7}")
    for name, values in times.items():
        print(f"{name:<40} {min(values):8.2f} {min(values) / bare:7.3f}")
    off = min(times["measurement off, tracking off"])
    tracked = min(times["measurement off, tracking on"])
    measured = min(times["quick-start schedule, tracking on"])
    print(f"engine overhead (measurement and tracking off): {100 * (off / bare - 1):+.1f} %")
    print(f"tracking overhead: {100 * (tracked / off - 1):+.1f} %")
    print(f"share of wall time spent measuring on the quick start's schedule: {100 * (1 - tracked / measured):.0f} %"
          f" (median of repeats: {statistics.median(times['quick-start schedule, tracking on']):.1f} s)")


if __name__ == "__main__":
    main()
