"""Conformance of the measurement on whole model libraries: every timm family and every transformers
architecture that builds tiny, in float64, against an explicit per-output-row Jacobian.

For each model: the ``exact`` estimator must agree with plain autograd (D, L, N, P, χ_net of both
batches, to 1e-6 relative), also with the self-check off (the fast path on its own), and
``hutchinson`` must be unbiased (|z| < 4 on χ_net of both batches); or the measurement must refuse
with a clear message (a ``ValueError`` of specreach's). Anything else is a failure: ``WRONG`` (a
number off without a word) or ``CRASH`` (an exception from inside a dependency).

The reference is independent of specreach: one ``torch.autograd.grad`` per counted output coordinate
(χ_net as the sum of those gradients' squared norms, never storing J), the loss gradient g by
autograd through the loss alone, and D = ⟨∇L_B, ∇L_A⟩ from two ordinary backwards.

    python benchmarks/zoo_conformance.py [--library timm transformers] [--only NAME ...] [--limit N]
                                         [--timeout 240] [--markdown docs/benchmarks/zoo_conformance.md]

timm: one representative per family (the model-name stem, e.g. ``resnet``, ``efficientnet``,
``tf_efficientnet``), the smallest of its first candidates by parameter count, 3 classes, images of
32×32 where the model takes them (else its own input size, up to 224). transformers: every
model type with a causal-LM, masked-LM, seq2seq-LM or image-classification head whose config builds
from generic tiny sizes (vocabulary 32, width 16, 2 layers, 2 heads), with text inputs alone.
Models over ``--max-params`` parameters are listed as skipped.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import re
import resource
import signal
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from specreach import measure_lnp

N_A, N_B = 2, 2  # samples per batch
LIMITS = {"params": 15_000_000}  # set from --max-params
CLASSES = 3
TOLERANCE = 1e-6
COMPARED = ("grad_dot", "loss_magnitude", "network_magnitude", "spectral_position", "chi_net_a", "chi_net_b")


# --- the independent reference -----------------------------------------------------------------------

def call(model: nn.Module, inputs: Any) -> torch.Tensor:
    if isinstance(inputs, dict):
        return model(**inputs)
    return model(inputs)


def squared(grad: torch.Tensor | None) -> float:
    if grad is None:
        return 0.0
    grad = grad.to_dense()
    return float(torch.linalg.vector_norm(grad, dtype=torch.complex128 if grad.is_complex() else torch.float64)) ** 2


def explicit_batch(model, loss_fn, batch, mask):
    """χ_net (one autograd.grad per counted output coordinate), χ_loss, ∇_θ L of one batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    inputs, targets = batch
    outputs = call(model, inputs)
    keep = torch.ones(outputs.shape, dtype=torch.bool)
    if mask is not None:
        keep &= mask.reshape(*mask.shape, *([1] * (outputs.dim() - mask.dim())))
    rows = keep.reshape(-1).nonzero().squeeze(1)
    chi_net = 0.0
    for chunk in rows.split(64):  # 64 rows of J at a time: one vmapped backward, or a loop where vmap fails
        chi_net += jacobian_rows_squared(outputs, params, chunk)
    detached = outputs.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(detached, targets), detached)
    chi_loss = float(g.double().reshape(-1)[rows].square().sum())
    gradient = torch.autograd.grad(loss_fn(outputs, targets), params, allow_unused=True)
    return chi_net, chi_loss, gradient


def jacobian_rows_squared(outputs: torch.Tensor, params: list, rows: torch.Tensor) -> float:
    """Σ over the given rows k of ‖∂outputs_k/∂θ‖², by plain autograd."""
    basis = torch.zeros(rows.numel(), outputs.numel(), dtype=outputs.dtype)
    basis[torch.arange(rows.numel()), rows] = 1
    try:
        grads = torch.autograd.grad(outputs, params, basis.reshape(-1, *outputs.shape), retain_graph=True,
                                    allow_unused=True, is_grads_batched=True)
        return sum(squared(g) for g in grads)
    except RuntimeError:
        flat = outputs.reshape(-1)
        total = 0.0
        for row in rows.tolist():
            total += sum(squared(g) for g in torch.autograd.grad(flat[row], params, retain_graph=True,
                                                                 allow_unused=True))
        return total


def explicit(model, loss_fn, batch_a, batch_b, mask_a, mask_b) -> dict[str, float]:
    chi_net_a, chi_loss_a, grad_a = explicit_batch(model, loss_fn, batch_a, mask_a)
    chi_net_b, chi_loss_b, grad_b = explicit_batch(model, loss_fn, batch_b, mask_b)
    d = 0.0
    for a, b in zip(grad_a, grad_b):
        if a is not None and b is not None:
            a, b = a.to_dense().reshape(-1), b.to_dense().reshape(-1)
            d += float(torch.vdot(a.to(torch.complex128), b.to(torch.complex128)).real) if a.is_complex() \
                else float(torch.dot(a.double(), b.double()))
    loss_magnitude, network_magnitude = math.sqrt(chi_loss_a * chi_loss_b), math.sqrt(chi_net_a * chi_net_b)
    return {"grad_dot": d, "loss_magnitude": loss_magnitude, "network_magnitude": network_magnitude,
            "spectral_position": d / (loss_magnitude * network_magnitude), "chi_net_a": chi_net_a,
            "chi_net_b": chi_net_b}


# --- one model ----------------------------------------------------------------------------------------

@dataclass
class Case:
    library: str
    family: str
    name: str
    build: Callable[[], tuple]  # () -> (model, loss_fn, batch_a, batch_b, mask_a, mask_b)


@dataclass
class Outcome:
    case: Case
    verdict: str  # exact, refused, WRONG, CRASH, skipped
    parameters: int = 0
    seconds: float = 0.0
    note: str = ""
    model_name: str = ""
    fast_share: float = math.nan  # share of parameters (by count) on a layer rule, op rule or closed form
    paths: dict[str, int] = field(default_factory=dict)  # path kind -> parameter tensors


class Timeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    def alarm(signum, frame):
        raise Timeout(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def path_kind(path: str) -> str:
    for kind in ("closed form", "layer rule", "op rules", "VJP", "unused"):
        if kind in path:
            return kind
    return "other"


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def check(case: Case, timeout: int, max_params: int, probes: int) -> Outcome:
    start = time.perf_counter()
    try:
        with time_limit(timeout):
            torch.manual_seed(0)
            model, loss_fn, batch_a, batch_b, mask_a, mask_b = case.build()
    except Exception as error:  # noqa: BLE001 - a model that does not build tiny is listed, not judged
        return Outcome(case, "skipped", note=f"not built: {_line(error)}" if isinstance(error, ValueError) else
                       f"does not build tiny: {type(error).__name__}: {_line(error)}")
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if parameters > max_params:
        return Outcome(case, "skipped", parameters, note=f"over {max_params:,} parameters")
    outcome = Outcome(case, "exact", parameters, model_name=getattr(model, "chosen_name", case.name))
    try:
        with time_limit(timeout):
            reference = explicit(model, loss_fn, batch_a, batch_b, mask_a, mask_b)
    except Timeout:
        return Outcome(case, "skipped", parameters, time.perf_counter() - start, "the reference took too long")
    except Exception as error:  # noqa: BLE001 - the model cannot run these inputs: listed, not judged
        return Outcome(case, "skipped", parameters, time.perf_counter() - start,
                       f"does not run: {type(error).__name__}: {_line(error)}")
    masks = {"loss_mask_a": mask_a, "loss_mask_b": mask_b} if mask_a is not None else {}
    try:
        with time_limit(timeout):
            result = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact", max_outputs=4096, **masks)
            alone = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="exact", max_outputs=4096, verify=False,
                                **masks)
            sampled = measure_lnp(model, loss_fn, batch_a, batch_b, estimator="hutchinson", probes=probes,
                                  generator=torch.Generator().manual_seed(1), **masks)
    except Timeout:
        outcome.verdict, outcome.note = "skipped", "the measurement took longer than the time limit"
    except ValueError as error:  # specreach's refusals are ValueErrors with the reason
        outcome.verdict, outcome.note = "refused", _line(error)
    except Exception as error:  # noqa: BLE001 - a crash is a finding
        outcome.verdict, outcome.note = "CRASH", f"{type(error).__name__}: {_line(error)} ({_where(error)})"
    else:
        wrong = [name for name in COMPARED for r in (result, alone)
                 if relative(getattr(r, name), reference[name]) > TOLERANCE]
        z = [abs(getattr(sampled, f"chi_net_{w}") - reference[f"chi_net_{w}"]) / getattr(sampled, f"chi_net_{w}_stderr")
             for w in "ab" if getattr(sampled, f"chi_net_{w}_stderr") > 0]
        exact_closed = [w for w in "ab" if getattr(sampled, f"chi_net_{w}_stderr") == 0
                        and relative(getattr(sampled, f"chi_net_{w}"), reference[f"chi_net_{w}"]) > TOLERANCE]
        if wrong or exact_closed or any(value >= 4 for value in z) or relative(sampled.grad_dot, reference["grad_dot"]) > TOLERANCE:
            outcome.verdict = "WRONG"
            outcome.note = "; ".join([f"{name}: {getattr(result, name):.6g} vs {reference[name]:.6g}" for name in dict.fromkeys(wrong)]
                                     + [f"hutchinson |z| {max(z):.1f}"] * bool(z and max(z) >= 4))
        else:
            outcome.note = f"worst relative error {max(relative(getattr(result, n), reference[n]) for n in COMPARED):.0e}" + \
                (f", hutchinson |z| ≤ {max(z):.1f}" if z else "")
        sizes = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
        kinds = {name: path_kind(path) for name, path in result.paths.items()}
        outcome.paths = dict(collections.Counter(kinds.values()))
        fast = sum(sizes.get(n, 0) for n, k in kinds.items() if k in ("closed form", "layer rule", "op rules"))
        slow = sum(sizes.get(n, 0) for n, k in kinds.items() if k == "VJP")
        outcome.fast_share = fast / (fast + slow) if fast + slow else math.nan
    outcome.seconds = time.perf_counter() - start
    return outcome


def _line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:220] + ("…" if len(text) > 220 else "")


def _where(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"


# --- timm ---------------------------------------------------------------------------------------------

_SMALL = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "micro", "mini", "small", "lite", "s", "t", "b0", "a0")


def timm_stem(name: str) -> str:
    """A model name's architecture stem: ``resnet18d`` → resnet, ``mobilenetv3_small_050`` → mobilenetv3."""
    match = re.match(r"(tf_|legacy_)?([a-z]+)(\d*)", name)
    if not match:
        return name
    prefix, letters, digits = match.groups()
    return (prefix or "") + letters + (digits if letters.endswith("v") else "")


def timm_cases(candidates: int = 1) -> list[Case]:
    """One case per family: a timm module's models grouped by their stem."""
    import timm

    def smallness(name: str) -> tuple:
        tokens = re.split(r"[_\d.]+", name)
        words = [i for i, word in enumerate(_SMALL) if word in tokens[1:]]
        numbers = [int(x) for x in re.findall(r"\d+", name)]
        return (min(words, default=len(_SMALL)), numbers[:1] or [10**9], len(name), name)

    families: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for module in timm.list_modules():
        for name in timm.list_models(module=module):
            if not name.startswith("test_"):  # timm's own test models
                families[(timm_stem(name), module)].append(name)
    stems = collections.Counter(stem for stem, _ in families)
    cases = []
    for (stem, module), names in sorted(families.items()):
        label = stem if stems[stem] == 1 else f"{stem} ({module})"
        chosen = sorted(names, key=smallness)[:candidates]
        cases.append(Case("timm", label, chosen[0], _timm_builder(chosen)))
    return cases


_BIG = {"base", "large", "huge", "giant", "gigantic", "xl", "xxl", "1b", "3b", "7b", "l", "h", "g", "e"}


def _timm_builder(names: list[str]):
    def build():
        import timm

        name = names[0]
        tokens = set(re.split(r"[_.]+", name)[1:])
        if tokens & _BIG:
            raise ValueError(f"its smallest variant, {name}, is {sorted(tokens & _BIG)[0]}-sized")
        with warnings.catch_warnings(), torch.device("meta"):  # counted before anything is allocated
            warnings.simplefilter("ignore")
            size = sum(p.numel() for p in timm.create_model(name, num_classes=CLASSES).parameters())
        if size > LIMITS["params"]:
            raise ValueError(f"its smallest variant, {name}, has {size:,} parameters")
        model, pixels = _timm_at_small_size(name)
        torch.manual_seed(0)
        x_a, x_b = torch.randn(N_A, 3, pixels, pixels), torch.randn(N_B, 3, pixels, pixels)
        y_a, y_b = torch.randint(0, CLASSES, (N_A,)), torch.randint(0, CLASSES, (N_B,))
        model.chosen_name = name
        return model, F.cross_entropy, (x_a, y_a), (x_b, y_b), None, None
    return build


def _timm_at_small_size(name: str) -> tuple[nn.Module, int]:
    """The model at 32 or 64 pixels (as ``img_size`` where it takes one); float64 convolutions on a CPU
    make anything larger too slow for a zoo."""
    import timm

    for pixels, options in ((32, {"img_size": 32}), (32, {}), (64, {"img_size": 64}), (64, {})):
        try:
            model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **options).double().eval()
            with torch.no_grad():
                out = model(torch.randn(1, 3, pixels, pixels))
            if out.shape == (1, CLASSES):
                return model, pixels
        except Exception:  # noqa: BLE001 - try the next size
            continue
    raise ValueError(f"{name} takes no images of 32 or 64 pixels")


# --- transformers -------------------------------------------------------------------------------------

VOCAB, TOKENS = 16, 4
TINY = dict(
    vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=64, n_embd=16, n_layer=2, n_head=2, n_positions=64, n_inner=32,
    n_ctx=64, d_model=16, d_ff=32, d_kv=8, num_layers=2, num_heads=2, num_decoder_layers=2, encoder_layers=2,
    decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
    ffn_dim=32, embed_dim=16, head_dim=8, kv_channels=8, image_size=32, patch_size=8, num_channels=3,
    num_labels=CLASSES, embedding_size=16, moe_intermediate_size=16, shared_expert_intermediate_size=16,
    num_experts=4, num_local_experts=4, num_experts_per_tok=2, n_routed_experts=4, n_shared_experts=1,
    first_k_dense_replace=1, q_lora_rank=8, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
    rotary_dim=4, partial_rotary_factor=0.5, sliding_window=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    decoder_start_token_id=1, type_vocab_size=2, layer_norm_eps=1e-5, rms_norm_eps=1e-6,
    dim=16, hidden_dim=32, n_layers=2, n_heads=2,  # DistilBERT's names
)
HEADS = {
    "causal-lm": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "masked-lm": "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "seq2seq-lm": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "image-classification": "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}


def transformers_cases() -> list[Case]:
    from transformers.models.auto import modeling_auto

    cases, seen = [], set()
    for head, mapping in HEADS.items():
        for model_type, class_name in getattr(modeling_auto, mapping).items():
            if isinstance(class_name, (tuple, list)):
                class_name = class_name[0]
            if model_type in seen and head != "seq2seq-lm":
                continue  # one head per architecture (seq2seq models are listed under their own)
            seen.add(model_type)
            cases.append(Case("transformers", f"{model_type} ({head})", class_name,
                              _transformers_builder(model_type, class_name, head)))
    return cases


def tiny_config(model_type: str):
    from transformers import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    defaults = config_class().to_dict()
    return config_class(**{key: value for key, value in TINY.items() if key in defaults})


class Logits(nn.Module):
    """What the loss reads: a causal LM's next-token logits (positions 0 … T−2), or the whole logits."""

    def __init__(self, model: nn.Module, shift: bool):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, **inputs):
        logits = self.model(**inputs).logits
        return logits[:, :-1] if self.shift else logits


def token_loss(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def _transformers_builder(model_type: str, class_name: str, head: str):
    def build():
        import transformers

        config = tiny_config(model_type)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = getattr(transformers, class_name)(config).double().eval()
        if hasattr(model.config, "use_cache"):
            model.config.use_cache = False
        vocab = getattr(config, "vocab_size", VOCAB) or VOCAB
        torch.manual_seed(0)

        def text(n):
            ids = torch.randint(3, min(vocab, VOCAB), (n, TOKENS))
            mask = torch.ones_like(ids)
            mask[0, -2:] = 0  # one padded sample
            return ids, mask

        if head == "image-classification":
            size = getattr(config, "image_size", 32)
            size = size if isinstance(size, int) else size[0]
            batches = [({"pixel_values": torch.randn(n, 3, size, size)}, torch.randint(0, CLASSES, (n,)))
                       for n in (N_A, N_B)]
            return Pixels(model), F.cross_entropy, batches[0], batches[1], None, None
        batches, masks = [], []
        for n in (N_A, N_B):
            ids, mask = text(n)
            inputs = {"input_ids": ids, "attention_mask": mask}
            if head == "causal-lm":
                labels = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            elif head == "masked-lm":
                labels = torch.full_like(ids, -100)
                labels[:, 1::2] = ids[:, 1::2]  # every other token is predicted
                labels = labels.masked_fill(mask == 0, -100)
            else:  # seq2seq: the decoder reads the targets shifted right
                labels = torch.randint(3, min(vocab, VOCAB), (n, TOKENS - 1))
                inputs["decoder_input_ids"] = torch.cat([torch.ones(n, 1, dtype=torch.long), labels[:, :-1]], 1)
            batches.append((inputs, labels))
            masks.append(labels != -100)
        return Logits(model, shift=head == "causal-lm"), token_loss, batches[0], batches[1], masks[0], masks[1]
    return build


class Pixels(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


# --- the table ----------------------------------------------------------------------------------------

def markdown(outcomes: list[Outcome]) -> str:
    lines = []
    for library in dict.fromkeys(o.case.library for o in outcomes):
        mine = [o for o in outcomes if o.case.library == library]
        judged = [o for o in mine if o.verdict != "skipped"]
        counts = collections.Counter(o.verdict for o in judged)
        shares = [o.fast_share for o in judged if o.verdict == "exact" and not math.isnan(o.fast_share)]
        lines += [f"## {library}", "",
                  f"{len(judged)} judged ({len(mine) - len(judged)} skipped): {counts['exact']} exact, "
                  f"{counts['refused']} refused clearly, {counts['WRONG']} silently wrong, {counts['CRASH']} crashes. "
                  f"Fast path (layer rules, op rules, closed form) for {_share(shares)} of the parameters of the "
                  "exact ones (median over models).", "",
                  "| family | model | parameters | verdict | fast path | paths (tensors) | seconds | note |",
                  "|---|---|---:|---|---:|---|---:|---|"]
        for o in mine:
            name = o.model_name or o.case.name
            paths = ", ".join(f"{kind} {count}" for kind, count in sorted(o.paths.items()))
            share = "" if math.isnan(o.fast_share) else f"{o.fast_share:.0%}"
            lines.append(f"| {o.case.family} | `{name}` | {o.parameters:,} | {o.verdict} | {share} | {paths} | "
                         f"{o.seconds:.1f} | {o.note.replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)


def _share(shares: list[float]) -> str:
    if not shares:
        return "none"
    ordered = sorted(shares)
    return f"{ordered[len(ordered) // 2]:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", nargs="+", default=["timm", "transformers"], choices=["timm", "transformers"])
    parser.add_argument("--only", nargs="*", help="families / model types to check (default: all)")
    parser.add_argument("--skip", nargs="*", default=[], help="families / model types to leave out (listed as skipped)")
    parser.add_argument("--limit", type=int, help="at most this many cases per library")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per model and stage")
    parser.add_argument("--max-params", type=int, default=15_000_000)
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--markdown", type=Path, help="write the table here")
    parser.add_argument("--max-memory-gb", type=float, default=6.0,
                        help="the process's heap limit: a model that ignores the tiny sizes fails to build, not the machine")
    args = parser.parse_args(argv)
    limit = int(args.max_memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    LIMITS["params"] = args.max_params
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    warnings.simplefilter("ignore")
    outcomes = []
    for library in args.library:
        cases = timm_cases() if library == "timm" else transformers_cases()
        if args.only:
            cases = [c for c in cases if any(c.family == o or c.family.startswith(o + " ") for o in args.only)]
        for case in cases[:args.limit]:
            left_out = any(case.family == s or case.family.startswith(s + " ") for s in args.skip)
            outcome = (Outcome(case, "skipped", note="left out of this run (--skip)") if left_out
                       else check(case, args.timeout, args.max_params, args.probes))
            outcomes.append(outcome)
            print(f"{library:12} {case.family:40.40} {outcome.verdict:8} {outcome.parameters:>12,} "
                  f"{outcome.seconds:7.1f}s {'' if math.isnan(outcome.fast_share) else f'{outcome.fast_share:4.0%}'} "
                  f"{outcome.note[:150]}", flush=True)
            if args.markdown:
                args.markdown.write_text(HEADER + markdown(outcomes))
    judged = [o for o in outcomes if o.verdict != "skipped"]
    counts = collections.Counter(o.verdict for o in judged)
    print(f"summary: {len(judged)} judged, {counts['exact']} exact, {counts['refused']} refused, "
          f"{counts['WRONG']} silently wrong, {counts['CRASH']} crashes, {len(outcomes) - len(judged)} skipped")
    return 1 if counts["WRONG"] or counts["CRASH"] else 0


HEADER = """# Conformance on whole model libraries

Written by `benchmarks/zoo_conformance.py` (see its docstring for what is checked and how): each
model tiny and in float64; `exact` against an explicit per-output-row Jacobian (to 1e-6, with the
self-check on and off), `hutchinson` unbiased (|z| < 4), or a clear refusal. "fast path": the share
of the parameters (by count) measured by a layer rule, an op rule or a readout's closed form rather
than a per-sample VJP.

"""

if __name__ == "__main__":
    sys.exit(main())
