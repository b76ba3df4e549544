"""A subset of ``benchmarks/zoo_conformance.py`` (its full table is in ``docs/benchmarks/``): small timm
families and transformers architectures, tiny and in float64, each exact against an explicit
per-output-row Jacobian (with the self-check on and off), Hutchinson unbiased, or refused clearly."""

import sys
import warnings
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import zoo_conformance  # noqa: E402

TIMM = ["convnext", "ghostnet", "lcnet", "levit", "mobilenetv3", "regnetx", "vit (vision_transformer)"]
TRANSFORMERS = ["llama (causal-lm)", "gpt2 (causal-lm)", "bert (causal-lm)", "t5 (seq2seq-lm)",
                "distilbert (masked-lm)", "vit (image-classification)"]


def cases(library, families):
    found = zoo_conformance.timm_cases() if library == "timm" else zoo_conformance.transformers_cases()
    chosen = {case.family: case for case in found if case.family in families}
    assert set(chosen) == set(families), set(families) - set(chosen)
    return [chosen[family] for family in families]


@pytest.mark.parametrize("case", cases("timm", TIMM) + cases("transformers", TRANSFORMERS),
                         ids=lambda case: f"{case.library}-{case.family}")
def test_exact_or_refused_clearly(case):
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outcome = zoo_conformance.check(case, timeout=600, max_params=15_000_000, probes=8)
    finally:
        torch.set_default_dtype(before)
    assert outcome.verdict in ("exact", "refused"), (outcome.verdict, outcome.note)
    if outcome.verdict == "refused":
        assert len(outcome.note) > 40, outcome.note  # says what, and what to do
