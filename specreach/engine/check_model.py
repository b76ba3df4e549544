"""``specreach check-model``: the measurement's self-check on a spec's models, before any training.

For each distinct model of a spec (its recipe, data and phase: seeds are the same model up to
initialization, and a sweep over the learning rate or the schedule leaves the model as it is, so
each is checked once), build it with its data as a run would, and compare the fast per-sample norms with plain autograd on two validation samples
(:func:`specreach.lnp.verify.verify_model`). Linear-probe runs on trained backbones are checked on
a random backbone of the same recipe: the coverage of the measurement depends on the architecture,
not on the weights.
"""

from __future__ import annotations

import json
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
    """One run per model: the first run of each recipe (without its seed), data and phase."""
    chosen: dict[str, RunSpec] = {}
    for run in runs:
        what = {"recipe": run.recipe.model_dump(mode="json", exclude={"seed"}), "phase": run.phase,
                "data": _data_without_seeded_params(run)}
        chosen.setdefault(json.dumps(what, sort_keys=True), run)
    return list(chosen.values())


def _data_without_seeded_params(run: RunSpec) -> dict:
    """The run's data section, less the parameters that follow the seed (``train.seed_params``)."""
    data = run.data.model_dump(mode="json")
    for key in run.train.seed_params:
        if key.startswith("data.params."):
            data["params"].pop(key.removeprefix("data.params."), None)
    return data


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
