"""The measurement's overhead on a whole training run at the paper's schedule density.

The paper measures 1 040 of its 66 116 steps (1.6 %): every one of the first 40, then 20 windows of
50. This trains the CPU Llama of ``lnp_cost.py`` (4 layers, width 96, vocab 4096, batch 32, context
128) on the built-in text twice from the same initialization and data: once bare, once with
:class:`~specreach.engine.LNPMonitor` on log-spaced windows that measure the same share of the run,
as the engine does it (the step's forward of A recorded for the measurement, adaptive K planned for
``--target-rse``). Prints the overhead, the probes each measurement used over training and the
relative standard error of N (and so of P) each reached; the last line reads
``overhead: X.X % at RSE ≤ Y %``.

Time is the process's CPU time on one thread, which other processes on a shared machine disturb far
less than the wall clock; the overhead on the last line compares each measured step with the median
unmeasured step of the same run (the two runs' totals, also printed, drift apart on a busy machine
by more than the measurements cost). A run of ``--steps`` steps measures round(1.6 % of them): a tenth as
single initial steps, the rest in windows of about a tenth each.

    python benchmarks/schedule_overhead.py [--steps 2500] [--target-rse 0.02] [--probes 8]
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time

import torch

from specreach.data.text import PydocText
from specreach.engine import LNPMonitor, MonitorConfig
from specreach.engine.sinks import Sink
from specreach.engine.tasks import token_cross_entropy
from specreach.models.llama import Llama, LlamaConfig
from specreach.spec import LogWindows

PAPER_SHARE = 1040 / 66116


def paper_like_schedule(steps: int) -> LogWindows:
    """Log-spaced windows measuring the paper's share of ``steps``."""
    measured = max(3, round(steps * PAPER_SHARE))
    initial = max(1, round(measured / 10))
    per_window = max(1, round(measured / 10))
    return LogWindows(initial_steps=initial, windows=(measured - initial) // per_window, steps_per_window=per_window)


class KeptRows(Sink):
    """The monitor's rows, kept in memory."""

    def __init__(self):
        self.rows: list[dict] = []

    def write(self, row):
        self.rows.append(row)


def train(steps: int, config: MonitorConfig | None, data: PydocText, seed: int) -> tuple[list[float], list[dict]]:
    """CPU seconds of each of ``steps`` AdamW steps, measured on ``config``'s schedule unless it is None;
    the rows."""
    torch.manual_seed(seed)
    model = Llama(LlamaConfig(vocab=4096, layers=4, hidden=96, ff=256, heads=2, context=128))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    kept = KeptRows()
    monitor = None if config is None else LNPMonitor(model, token_cross_entropy, data.validation_pool(), config,
                                                     sink=kept)
    batches = (batch for epoch in itertools.count() for batch in data.train_batches(32, data_seed=seed + epoch))
    seconds = []
    for step in range(steps):
        start = time.process_time()
        inputs, targets = next(batches)
        optimizer.zero_grad(set_to_none=True)
        if monitor is None:
            loss = token_cross_entropy(model(inputs), targets)
            loss.backward()
        else:  # as the engine does it
            with monitor.record_forward(step):
                outputs = model(inputs)
            loss = token_cross_entropy(outputs, targets)
            monitor.keep(outputs, loss)
            loss.backward(retain_graph=monitor.shares_forward(step))
            monitor.step(step, (inputs, targets), loss, outputs=outputs)
            del outputs
        optimizer.step()
        if monitor is not None:
            monitor.after_update()
        seconds.append(time.process_time() - start)
    if monitor is not None:
        monitor.flush()
    return seconds, kept.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--target-rse", type=float, default=0.02, help="N's relative standard error per measurement")
    parser.add_argument("--probes", type=int, default=8, help="K of the first measurement")
    parser.add_argument("--max-probes", type=int, default=32)
    parser.add_argument("--fixed-k", action="store_true", help="K = --probes throughout (no plan), for comparison")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    data = PydocText(context=128, validation_size=256)
    schedule = paper_like_schedule(args.steps)
    config = MonitorConfig(total_steps=args.steps, schedule=schedule, probes=args.probes, batch_size=32,
                           target_rse=None if args.fixed_k else args.target_rse, max_probes=args.max_probes)
    bare_steps, _ = train(args.steps, None, data, args.seed)
    measured_steps, records = train(args.steps, config, data, args.seed)
    bare, measured = sum(bare_steps), sum(measured_steps)
    rows = [r for r in records if isinstance(r.get("network_magnitude"), float) and math.isfinite(r["network_magnitude"])]
    print(f"model: Llama 4×96, FF 256, vocab 4096; batch 32, context 128; {args.steps} steps; "
          f"{len(rows)} measured ({len(rows) / args.steps:.1%}; the paper 1.6 %): {schedule}")
    print(f"{'step':>6} {'K (A, B)':>10} {'RSE of N':>9} {'P':>11}")
    for row in rows:
        rse = row["network_magnitude_stderr"] / row["network_magnitude"]
        print(f"{row['step']:>6} {int(row['probes_a']):>4}, {int(row['probes_b']):<4} {rse:9.2%} "
              f"{row['spectral_position']:11.3e}")
    worst = max(row["network_magnitude_stderr"] / row["network_magnitude"] for row in rows)
    mean_k = sum(row["probes_a"] for row in rows) / len(rows)
    # Within the measured run, each measured step against the median of its unmeasured steps: both
    # see the same machine at the same time, which the two runs' totals (minutes apart) do not.
    measured_at = {row["step"] for row in rows}
    typical = statistics.median(t for step, t in enumerate(measured_steps) if step not in measured_at)
    extra = sum(measured_steps[step] - typical for step in measured_at)
    print(f"CPU seconds: training alone {bare:.1f}, with measurement {measured:.1f} "
          f"(two runs: {(measured - bare) / bare:+.1%}); a step {typical:.3f}, mean K {mean_k:.1f}")
    print(f"a measured step costs {extra / len(rows) / typical:.2f} training steps more than an unmeasured one")
    print(f"overhead: {extra / (typical * args.steps):.1%} at RSE ≤ {worst:.1%}")


if __name__ == "__main__":
    main()
