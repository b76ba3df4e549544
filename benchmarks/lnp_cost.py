"""Cost of an LNP measurement against a training step, in one process.

Model: the performance notes' Llama (vocab 4096, hidden 96, 4 layers, FF 256, 2 heads,
untied head, nn.RMSNorm), batch 32, context 128, float32. Prints seconds and ratios to a
plain training step (forward, cross-entropy backward, AdamW):

- specreach: one Hutchinson probe (given the forward), and a full cross-batch measurement
  with K probes per batch reusing the step's gradient on A (``measure_lnp_at_step``);
- straightforward: Opacus ``GradSampleModule`` materializing per-sample gradients, a fresh
  forward per probe, and separate gradient passes for D on A and on B;
- a tied head: the same model with its head tied functionally to the embedding
  (``logits = h @ embedding.weight.T``, nanoGPT's shape), whose embedding weight's two uses are
  op rules with materialized per-sample gradients (``--skip-tied`` leaves it out);
- peak tensor memory (allocations traced by the autograd profiler) of a training step and
  of a measurement;
- the fast path's self-check (samples independent, per-sample norms against plain autograd on two
  samples), which ``measure_lnp`` runs once per model.

- the figure of merit: compute (in training steps) to reach 1 % relative standard error on N and
  on P, from the spread of repeated independent measurements (not the reported SE):
  cost × (relative SD / 1 %)².

    python benchmarks/lnp_cost.py [--probes 8] [--repeats 5] [--device cuda] [--paper-scale]
                                  [--threads 1 --clock cpu]

``--paper-scale`` uses the paper's 15.5M-parameter SimpleStories model at context 512 (and
``--params 134m`` the 134M one). ``--clock cpu`` times this process's CPU seconds instead of the
wall clock, which other processes on a shared machine disturb far less (use it with one thread).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from opacus import GradSampleModule

from specreach import measure_lnp_at_step
from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.lnp.probes import ProbeAccumulator, rademacher
from specreach.lnp.step_forward import record_step_forward
from specreach.lnp.verify import verify_model
from specreach.models.llama import Llama, LlamaConfig


class TiedLlama(Llama):
    """The head is the embedding's weight, used functionally (nanoGPT): ``h @ embedding.weight.T``."""

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        del self.output

    def forward(self, tokens):
        return self.representation(tokens) @ self.embedding.weight.T


def token_cross_entropy(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter


def timed(fn, repeats, device):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = CLOCK()
        fn()
        sync(device)
        times.append(CLOCK() - start)
    return statistics.median(times)


def peak_bytes(fn, device):
    """Peak of live tensor memory allocated by ``fn`` above what existed when it started."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.autograd.profiler.profile(profile_memory=True, use_kineto=False) as prof:
        fn()
    changes = sorted(
        (e.time_range.start, e.self_cpu_memory_usage) for e in prof.function_events if e.self_cpu_memory_usage
    )
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return peak


def straightforward_chi_net(gsm, inputs, probes, generator):
    """A fresh forward per probe; Opacus materializes every per-sample gradient."""
    estimates = []
    for _ in range(probes):
        outputs = gsm(inputs)
        (outputs * rademacher(outputs.shape, generator, outputs)).sum().backward()
        per_sample = torch.zeros(inputs.shape[0], device=inputs.device)
        for p in gsm.parameters():
            per_sample += p.grad_sample.reshape(inputs.shape[0], -1).square().sum(1)
            p.grad_sample = None
            p.grad = None
        estimates.append(per_sample.sum())
    return torch.stack(estimates).mean()


def straightforward_measurement(gsm, batch_a, batch_b, probes, generator):
    grads = []
    for inputs, targets in (batch_a, batch_b):
        gsm.zero_grad(set_to_none=True)
        token_cross_entropy(gsm(inputs), targets).backward()
        grads.append([p.grad.clone() for p in gsm.parameters()])
        for p in gsm.parameters():
            p.grad_sample = None
    gsm.zero_grad(set_to_none=True)
    grad_dot = sum((a * b).sum() for a, b in zip(*grads))
    chi_a = straightforward_chi_net(gsm, batch_a[0], probes, generator)
    chi_b = straightforward_chi_net(gsm, batch_b[0], probes, generator)
    return float(grad_dot), float(chi_a), float(chi_b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--paper-scale", action="store_true")
    parser.add_argument("--skip-straightforward", action="store_true")
    parser.add_argument("--skip-tied", action="store_true")
    parser.add_argument("--params", choices=["15.5m", "134m", "350m"], default="15.5m",
                        help="size at --paper-scale: Table 1's 15.5M or 134M, or a 336M Llama (24 layers, width 1024)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: 32)")
    parser.add_argument("--context", type=int, default=None, help="context length (default: 128, 512 at --paper-scale)")
    parser.add_argument("--rse-repeats", type=int, default=40, help="independent measurements for the figure of merit")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--train-steps", type=int, default=0,
                        help="first train this many AdamW steps (lr 3e-3) on random tokens: the probe variance, "
                             "hence the figure of merit, differs between initial and trained weights")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.paper_scale and args.params == "350m":  # GPT-2-medium-sized: beyond the paper's largest
        config, batch, context = LlamaConfig(vocab=4096, layers=24, hidden=1024, ff=3072, heads=16, context=512), 32, 512
    elif args.paper_scale and args.params == "134m":  # Table 1, 134M: 18 layers, hidden 768, FF 2048, 12 heads
        config, batch, context = LlamaConfig(vocab=4096, layers=18, hidden=768, ff=2048, heads=12, context=512), 32, 512
    elif args.paper_scale:  # Table 1, 15.5M: 7 layers, hidden 384, FF 1024, 5 heads
        config, batch, context = LlamaConfig(vocab=4096, layers=7, hidden=384, ff=1024, heads=5, context=512), 32, 512
    else:
        config, batch, context = LlamaConfig(vocab=4096, layers=4, hidden=96, ff=256, heads=2, context=128), 32, 128
    batch = args.batch or batch
    if args.context:
        config = dataclasses.replace(config, context=args.context)
        context = args.context
    model = Llama(config).to(device)
    params = [p for p in model.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def tokens():
        x = torch.randint(0, config.vocab, (batch, context + 1), device=device)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    warm_up = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(args.train_steps):
        inputs, targets = tokens()
        warm_up.zero_grad(set_to_none=True)
        token_cross_entropy(model(inputs), targets).backward()
        warm_up.step()
    batch_a, batch_b = tokens(), tokens()
    generator = torch.Generator(device=device).manual_seed(0)
    state = {}

    def training_step():
        optimizer.zero_grad(set_to_none=True)
        state["logits"] = model(batch_a[0])
        token_cross_entropy(state["logits"], batch_a[1]).backward()
        optimizer.step()

    def one_probe_setup():
        tape = PerSampleNormTape(model, dict(model.named_parameters()))
        with tape:
            outputs = model(batch_a[0])
        state["accumulator"] = ProbeAccumulator(tape, outputs)

    def one_probe():
        state["accumulator"].add_random(generator)
        sync(device)

    def step_gradient():
        """The step's forward and backward, before its update: what the engine measures at."""
        optimizer.zero_grad(set_to_none=True)
        state["logits"] = model(batch_a[0])
        token_cross_entropy(state["logits"], batch_a[1]).backward()

    def measurement():
        state["result"] = measure_lnp_at_step(
            model, token_cross_entropy, batch_a, batch_b, grad_a=[p.grad for p in params],
            outputs_a=state["logits"], estimator="hutchinson", probes=args.probes, generator=generator,
        )

    def step_gradient_and_shared_measurement():
        """As the engine and LNPMonitor.record_forward do: the step's forward of A recorded, its graph
        kept through the backward, and the measurement taking A from it."""
        optimizer.zero_grad(set_to_none=True)
        with record_step_forward(model) as recorded:
            logits = model(batch_a[0])
        loss = token_cross_entropy(logits, batch_a[1])
        recorded.keep(logits, loss)
        loss.backward(retain_graph=True)
        state["result"] = measure_lnp_at_step(
            model, token_cross_entropy, batch_a, batch_b, grad_a=[p.grad for p in params], outputs_a=logits,
            estimator="hutchinson", probes=args.probes, generator=generator, step_forward=recorded,
        )
        recorded.clear()

    n_params = sum(p.numel() for p in params)
    print(f"model: Llama {config.layers}×{config.hidden}, FF {config.ff}, {config.heads} heads, vocab {config.vocab}, "
          f"{n_params / 1e6:.2f}M parameters; batch {batch}, context {context}; {device}; K = {args.probes}")
    # Timing the step takes optimizer steps; every measurement below is of the weights before it
    # (initial, or after --train-steps), so that the figure of merit does not depend on --repeats.
    initial = copy.deepcopy(model.state_dict())
    t_step = timed(training_step, args.repeats, device)
    model.load_state_dict(initial)
    one_probe_setup()
    t_probe = timed(one_probe, args.repeats, device)
    state.clear()
    step_gradient()
    t_measure = timed(measurement, args.repeats, device)
    assert state["result"].step_gradient_reused
    # The same at a training step that recorded its forward of A: what it adds to the step's forward and backward.
    t_shared = timed(step_gradient_and_shared_measurement, args.repeats, device) - timed(step_gradient, args.repeats, device)
    # The fast path's self-check, which measure_lnp runs once per model (the warm-up above ran it).
    t_verify = timed(lambda: verify_model(model, token_cross_entropy, batch_a), args.repeats, device)
    rows = [
        ("training step (forward, backward, AdamW)", t_step),
        ("specreach: one Hutchinson probe (forward shared)", t_probe),
        (f"specreach: cross-batch measurement, K = {args.probes} per batch", t_measure),
        ("specreach: the same, A's forward recorded in the training step", t_shared),
        ("specreach: the self-check, once per model", t_verify),
    ]
    if not args.skip_straightforward:
        gsm = GradSampleModule(copy.deepcopy(model), batch_first=True, loss_reduction="sum")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")

        def straightforward_probe():
            straightforward_chi_net(gsm, batch_a[0], 1, generator)

        rows.append(("straightforward: one probe (fresh forward, Opacus grad samples)",
                     timed(straightforward_probe, args.repeats, device)))
        rows.append((f"straightforward: cross-batch measurement, K = {args.probes} per batch",
                     timed(lambda: straightforward_measurement(gsm, batch_a, batch_b, args.probes, generator),
                           max(1, args.repeats // 2), device)))
    if not args.skip_tied:
        torch.manual_seed(0)
        tied = TiedLlama(config).to(device)
        tied_state = {}

        def tied_step_gradient():
            tied.zero_grad(set_to_none=True)
            tied_state["logits"] = tied(batch_a[0])
            token_cross_entropy(tied_state["logits"], batch_a[1]).backward()

        def tied_measurement():
            tied_state["result"] = measure_lnp_at_step(
                tied, token_cross_entropy, batch_a, batch_b, grad_a=[p.grad for p in tied.parameters()],
                outputs_a=tied_state["logits"], estimator="hutchinson", probes=args.probes, generator=generator,
            )

        tied_step_gradient()
        rows.append((f"tied-head GPT (op rules): cross-batch measurement, K = {args.probes}",
                     timed(tied_measurement, max(1, args.repeats // 2), device)))
        assert tied_state["result"].paths["embedding.weight"].startswith("op rules")
    print(f"{'what':<66} {'seconds':>8} {'× step':>7}")
    for name, seconds in rows:
        print(f"{name:<66} {seconds:8.3f} {seconds / t_step:7.2f}")
    if not args.skip_straightforward:
        straightforward = dict(rows)[f"straightforward: cross-batch measurement, K = {args.probes} per batch"]
        print(f"gain of specreach over straightforward, full measurement: {straightforward / rows[2][1]:.2f}×")

    # The figure of merit: independent measurements at the same weights and batches.
    repeats: list = []
    for seed in range(args.rse_repeats):
        independent = torch.Generator(device=device).manual_seed(1000 + seed)
        repeats.append(measure_lnp_at_step(
            model, token_cross_entropy, batch_a, batch_b, grad_a=[p.grad for p in params],
            outputs_a=state["logits"], estimator="hutchinson", probes=args.probes, generator=independent))
    cost = t_measure / t_step
    for name, attribute in (("N", "network_magnitude"), ("P", "spectral_position")) if len(repeats) > 1 else ():
        values = [getattr(r, attribute) for r in repeats]
        spread = statistics.stdev(values) / abs(statistics.fmean(values))
        # The SD of m draws is itself uncertain by about 1/√(2(m−1)), its square twice that.
        uncertainty = 2 / math.sqrt(2 * (len(values) - 1))
        print(f"{name}: relative SD over {len(values)} independent measurements {spread:.2%}; compute to 1 % "
              f"relative error: {cost * (spread / 0.01) ** 2:.2f} training steps (± {uncertainty:.0%})")

    result = state["result"]
    print(f"last measurement: P = {result.spectral_position:.3e} ± {result.spectral_position_stderr:.1e}, "
          f"N = {result.network_magnitude:.4e} ± {result.network_magnitude_stderr:.1e} "
          f"(relative error {result.network_magnitude_stderr / result.network_magnitude:.1%})")

    training_step()
    step_peak = peak_bytes(training_step, device)
    step_gradient()
    measure_peak = peak_bytes(measurement, device)
    print(f"peak tensor memory: training step {step_peak / 2**20:.1f} MiB, measurement {measure_peak / 2**20:.1f} MiB "
          f"({measure_peak / step_peak:.2f}× the step)")


if __name__ == "__main__":
    main()
