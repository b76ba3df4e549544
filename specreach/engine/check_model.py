"""``specreach check-model``: the measurement's self-check on a spec's models, before any training.

For each distinct model of a spec (every size, parameterization, phase and sweep value; seeds
are the same model up to initialization, so one seed is checked), build it with its data as a run
would, and compare the fast per-sample norms with plain autograd on two validation samples
(:func:`specreach.lnp.verify.verify_model`). Linear-probe runs on trained backbones are checked on
a random backbone of the same recipe: the coverage of the measurement depends on the architecture,
not on the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from specreach.engine.runs import RunSpec
from specreach.engine.tasks import loss_for, output_size
from specreach.engine.training import DTYPES, build_data, build_network, model_recipe, resolve_device, to_device
from specreach.lnp.verify import VerificationReport, verify_model


@dataclass(frozen=True)
class ModelCheck:
    run: str  # the run whose model was checked
    report: VerificationReport


def distinct_models(runs: list[RunSpec]) -> list[RunSpec]:
    """One run per model: the first seed of each size, phase and sweep value."""
    chosen: dict[tuple, RunSpec] = {}
    for run in runs:
        key = (run.size, run.phase, run.recipe.parameterization.kind, tuple(sorted(map(str, run.sweep.items()))))
        chosen.setdefault(key, run)
    return list(chosen.values())


def check_run(run: RunSpec, samples: int = 2) -> ModelCheck:
    """The self-check on this run's model (at initialization) and two of its validation samples."""
    if run.phase == "probe-trained":  # same architecture as a random backbone; no checkpoint needed
        run = run.model_copy(update={"phase": "probe-random"})
    device, dtype = resolve_device(run.train.device), DTYPES[run.train.dtype]
    data = build_data(run)
    info = data.info()
    inputs, targets = data.validation_pool()
    model = build_network(run, output_size(info), model_recipe(run, info)).to(device=device, dtype=dtype)
    batch = (to_device(inputs[:samples], device, dtype), to_device(targets[:samples], device, dtype))
    return ModelCheck(run.name, verify_model(model, loss_for(info), batch, samples=samples, raise_on_mismatch=False))


def check_runs(runs: list[RunSpec]) -> list[ModelCheck]:
    return [check_run(run) for run in distinct_models(runs)]
