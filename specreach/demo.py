"""A self-contained demonstration: train a small Llama on text that ships with Python and
watch the LNP components move. Needs no download (the text is CPython's ``pydoc_data``)."""

from __future__ import annotations

import time

import pydoc_data.topics
import torch
import torch.nn.functional as F

from specreach.lnp.measure import measure_lnp_at_step
from specreach.models.llama import Llama, LlamaConfig


def pydoc_bytes() -> torch.Tensor:
    """The English help topics of the Python documentation, as a byte-level token stream."""
    text = "\n\n".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics))
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def log_spaced_steps(last: int, count: int) -> list[int]:
    steps = torch.logspace(0, torch.log10(torch.tensor(float(last))), count).round().long().tolist()
    return sorted({0, *steps})


def run_demo(steps: int = 500, measurements: int = 8, probes: int = 8, seed: int = 0, print_fn=print) -> list[dict]:
    torch.manual_seed(seed)
    tokens = pydoc_bytes()
    context, batch_size = 64, 16
    held_out = tokens[-batch_size * (context + 1) * 4:]  # the tail is the validation pool
    train = tokens[: -len(held_out)]
    config = LlamaConfig(vocab=256, layers=2, hidden=64, ff=172, heads=2, context=context)
    model = Llama(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    data_rng = torch.Generator().manual_seed(seed)
    probe_rng = torch.Generator().manual_seed(seed + 1)

    def sample(stream: torch.Tensor):
        starts = torch.randint(0, len(stream) - context - 1, (batch_size,), generator=data_rng)
        windows = torch.stack([stream[s: s + context + 1] for s in starts])
        return windows[:, :-1], windows[:, 1:]

    schedule = set(log_spaced_steps(steps, measurements))
    params = sum(p.numel() for p in model.parameters())
    print_fn(f"Llama {config.layers} layers × {config.hidden} hidden ({params / 1e6:.2f}M parameters), "
             f"byte-level tokens of the Python help topics, {steps} AdamW steps; "
             f"Hutchinson with {probes} probes, batch B from held-out text")
    print_fn(f"{'step':>5} {'loss':>7} {'L':>10} {'N':>10} {'P':>10} {'± P':>9} {'L~':>9} {'N~':>9}")
    rows = []
    started = time.perf_counter()
    for step in range(steps + 1):
        inputs, targets = sample(train)
        optimizer.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = token_cross_entropy(logits, targets)
        loss.backward()
        if step in schedule:
            result = measure_lnp_at_step(
                model, token_cross_entropy, (inputs, targets), sample(held_out),
                grad_a=[p.grad for p in model.parameters()], outputs_a=logits,
                estimator="hutchinson", probes=probes, generator=probe_rng,
            )
            rows.append({"step": step, "loss": loss.item(), **result.as_dict()})
            print_fn(f"{step:5d} {loss.item():7.3f} {result.loss_magnitude:10.3e} {result.network_magnitude:10.3e} "
                     f"{result.spectral_position:10.3e} {result.spectral_position_stderr:9.1e} "
                     f"{result.loss_magnitude_normalized:9.3f} {result.network_magnitude_normalized:9.3f}")
        if step < steps:
            optimizer.step()
    print_fn(f"done in {time.perf_counter() - started:.0f} s. P is the spectral position: its fall during training "
             "means learning moves to smaller eNTK eigenvalues.")
    return rows
