"""Where a Hutchinson probe's cost goes, and whether two variance reductions would pay.

On ``benchmarks/lnp_cost.py``'s Llama (batch 32, context 128), in one process:

1. Cost of one probe, split into the activation-only backward (``torch.autograd.grad`` to the
   planned calls' outputs) and the per-sample norms computed from it, in training steps. With the
   readout's closed form, a probe is a backward from the head's input without any parameter
   gradient plus T·d_in·d_out (or T²·d_out) per linear layer: this is the floor a faster probe
   has to beat.
2. Per-probe relative SD of χ_net (the batch sum; K probes give it / √K):
   - probes at the head's input with covariance c²WᵀW, plain Rademacher and reflected over
     positions (the default, ``specreach.lnp.probes.position_reflection``);
   - probes moved one position-wise layer lower, to the final RMSNorm's input, each position
     whitened by its own covariance JₜᵀWᵀWJₜ (the norm's Jacobian Jₜ): the same expectation with
     the position-wise part of the variance removed (the norm's own gain is left out of both);
   - the variance a parameter-side sketch would add: estimating each linear layer's ‖Gᵢ‖² by
     ‖Gᵢw‖² with one Rademacher w (cost T·(d_in+d_out) instead of T·d_in·d_out) adds
     2(‖GᵢᵀGᵢ‖² − Σ diag²) per layer and sample; printed as a multiple of the probe variance
     (m sketches divide it by m).
3. Where that variance comes from, per top-level group of parameters (the embedding, each block):
   the group's share of χ_net (without the readout's exact share) and how much of the probe
   variance would remain if that group's share were known exactly (its own variance and its
   covariances with the others removed). A variance reduction pays where this is small.

    python benchmarks/probe_floor.py [--train-steps 30] [--probes 64] [--repeats 5]

``--train-steps`` first trains the model with AdamW on random tokens (the variance at
initialization and after training differ).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from specreach.lnp.per_sample_norms import PerSampleNormTape
from specreach.lnp.probes import ProbeAccumulator, position_reflection, rademacher, reflect
from specreach.models.llama import Llama, LlamaConfig


def token_cross_entropy(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rms_norm_whitening(norm: torch.nn.RMSNorm, inputs: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Per position, R with R Rᵀ = Jᵀ C J, J the RMSNorm's Jacobian at that position's input."""
    x = inputs.detach().double()
    width = x.shape[-1]
    eps = norm.eps if norm.eps is not None else torch.finfo(inputs.dtype).eps  # RMSNorm's default
    rms = x.square().mean(-1, keepdim=True).add(eps).sqrt()
    identity = torch.eye(width, dtype=torch.float64)
    gain = norm.weight.detach().double()
    jacobian = (gain[:, None] / rms[..., None]) * (identity - x[..., :, None] * x[..., None, :] / (width * rms[..., None] ** 2))
    eigenvalues, eigenvectors = torch.linalg.eigh(jacobian.transpose(-1, -2) @ covariance @ jacobian)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()[..., None, :]).to(inputs.dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=0)
    parser.add_argument("--probes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(vocab=4096, layers=4, hidden=96, ff=256, heads=2, context=128)
    model = Llama(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def tokens():
        x = torch.randint(0, config.vocab, (32, config.context + 1))
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def training_step(batch):
        optimizer.zero_grad(set_to_none=True)
        token_cross_entropy(model(batch[0]), batch[1]).backward()
        optimizer.step()

    for _ in range(args.train_steps):
        training_step(tokens())
    batch = tokens()
    t_step = median_seconds(lambda: training_step(batch), args.repeats)
    model.eval()

    tape = PerSampleNormTape(model, dict(model.named_parameters()))
    with tape:
        outputs = model(batch[0])
    accumulator = ProbeAccumulator(tape, outputs)
    readout = accumulator.readout
    assert readout is not None, "the benchmark model's head is a linear readout"
    generator = torch.Generator().manual_seed(1)

    # 1. Where one probe's time goes.
    rules = [rule for rule in tape.coverage.rule_calls if rule.call is not readout.call]
    targets = [rule.call.output for rule in rules]
    vectors = rademacher(accumulator.probe_shape, generator, outputs) @ readout.input_mixing()
    t_backward = median_seconds(
        lambda: torch.autograd.grad(readout.input, targets, grad_outputs=vectors, retain_graph=True), args.repeats)
    t_probe = median_seconds(lambda: tape.squared_norms(readout.input, vectors, skip=readout), args.repeats)
    print(f"model: Llama {config.layers}×{config.hidden}, batch 32, context {config.context}; "
          f"{args.train_steps} training steps before measuring")
    print(f"{'one probe':<52} {'seconds':>8} {'× step':>7}")
    for name, seconds in (("training step (forward, backward, AdamW)", t_step),
                          ("probe: activation-only backward", t_backward),
                          ("probe: per-sample norms from it", t_probe - t_backward),
                          ("probe: total", t_probe)):
        print(f"{name:<52} {seconds:8.3f} {seconds / t_step:7.2f}")

    # 2. Per-probe spread of χ_net (the final norm's own gain left out of both placements).
    by_group: dict[str, list[float]] = {}  # per top-level group, each head-input probe's share

    def chi_net_draws(start, draw_vectors, record_groups: bool = False) -> torch.Tensor:
        draws = []
        for _ in range(args.probes):
            norms = tape.squared_norms(start, draw_vectors(), skip=readout)
            norms.pop("norm.weight", None)
            draws.append(torch.stack([value.double().sum() for value in norms.values()]).sum())
            if record_groups:
                shares: dict[str, float] = {}
                for name, value in norms.items():
                    group = ".".join(name.split(".")[:2]) if name.startswith("layers.") else name.split(".")[0]
                    shares[group] = shares.get(group, 0.0) + float(value.double().sum())
                for group, share in shares.items():
                    by_group.setdefault(group, []).append(share)
        return torch.stack(draws)

    mixing = readout.input_mixing()
    at_head = chi_net_draws(readout.input, lambda: rademacher(accumulator.probe_shape, generator, outputs) @ mixing)
    v = position_reflection(accumulator.probe_shape, outputs)
    assert v is not None

    at_head_reflected = chi_net_draws(
        readout.input, lambda: reflect(rademacher(accumulator.probe_shape, generator, outputs), v) @ mixing,
        record_groups=True)
    norm_input = next(call for call in tape.recorder.calls if call.path == "norm").args[0]
    whitening = rms_norm_whitening(model.norm, norm_input, mixing.double().T @ mixing.double())
    at_norm = chi_net_draws(
        norm_input, lambda: (whitening @ rademacher(norm_input.shape, generator, norm_input)[..., None]).squeeze(-1))

    sketch_variances = []
    for _ in range(min(args.probes, 16)):
        vectors = rademacher(accumulator.probe_shape, generator, outputs) @ mixing
        backprops = torch.autograd.grad(readout.input, targets, grad_outputs=vectors, retain_graph=True)
        added = torch.zeros((), dtype=torch.float64)
        for rule, backprop in zip(rules, backprops):
            module = rule.call.module
            if not isinstance(module, torch.nn.Linear):
                continue
            g = backprop.reshape(32, -1, module.out_features).double()
            a = rule.call.args[0].detach().reshape(32, -1, module.in_features).double()
            per_sample = g.transpose(1, 2) @ a
            gram = per_sample.transpose(1, 2) @ per_sample
            added += 2 * (gram.square().sum() - torch.diagonal(gram, dim1=1, dim2=2).square().sum())
        sketch_variances.append(float(added))

    print(f"\nχ_net over {args.probes} probes (per-probe relative SD; K probes: / √K)")
    for name, draws in (("probes at the head's input, plain Rademacher", at_head),
                        ("probes at the head's input, reflected over positions (default)", at_head_reflected),
                        ("probes at the final norm's input, whitened per position", at_norm)):
        print(f"{name:<64} mean {float(draws.mean()):.4e}  relative SD {float(draws.std() / draws.mean()):.4f}")
    ratio = statistics.fmean(sketch_variances) / float(at_head.var())
    print(f"parameter-side sketch (one w per layer and sample): adds {ratio:.2f}× the probe variance; "
          f"with m sketches {ratio:.2f}/m")

    print("\nwhere the probe variance comes from (probes at the head's input, reflected)")
    print(f"{'group':<22} {'share of χ_net':>15} {'variance left if exact':>23}")
    for group, shares in by_group.items():
        rest = at_head_reflected - torch.tensor(shares, dtype=torch.float64)
        print(f"{group:<22} {float(torch.tensor(shares).mean() / at_head_reflected.mean()):15.3f} "
              f"{float(rest.var() / at_head_reflected.var()):23.3f}")


if __name__ == "__main__":
    main()
