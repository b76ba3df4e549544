"""The Pydantic models of a spec, and nothing else.

Extra keys are forbidden at every level. Components (the model, the data source, the
executor) are discriminated by ``kind``: built-in and plugin kinds alike are looked up in the
plugin registry and their ``params`` validated against that component's own parameter model.

This module imports no torch (nor mup, opacus, timm): built-in components are registered by
name and their parameter models live in :mod:`specreach.params`, so a spec validates in well
under a second.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from specreach.models.presets import PRESETS
from specreach.params.models import Parameterization
from specreach.plugins import lookup


class Strict(BaseModel):
    # inf and nan are never meant: a spec's numbers are finite (``lr: .inf`` is refused).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: A name that becomes one path component (run folders) and part of MLflow keys: letters, digits, _ . -
NAME = re.compile(r"[A-Za-z0-9_.-]+")
#: Run folder names may also hold the = and + of sweep values (``lr=1e-3``, ``flops=1e+10``).
RUN_NAME = re.compile(r"[A-Za-z0-9_.+=-]+")
#: Bounds on what no run can mean: they catch a typo before it hangs a run or fills the disk.
MAX_STEPS = 10**9
MAX_SEEDS = 10_000
MAX_PROBES = 4096
MAX_BATCH = 10**6
#: The largest float32: AdamW's first update divides lr by 1 − β1, which must stay below it.
FLOAT32_MAX = 3.4028234663852886e38
#: Runs one spec may expand to (sizes × seeds × swept values × probes): counted before expanding.
MAX_RUNS = 10_000
#: Measured steps one run may have (a measurement costs several training steps).
MAX_MEASURED_STEPS = 1_000_000
#: Bytes of a file name on common file systems (ext4, xfs, btrfs, tmpfs, APFS, NTFS): a run's folder.
MAX_FOLDER_NAME = 255


def safe_name(value: str, what: str, pattern: re.Pattern = NAME) -> str:
    """``value`` if it is a safe single path component (and MLflow key part), else a clear error."""
    if not isinstance(value, str) or not pattern.fullmatch(value) or value in (".", ".."):
        allowed = "letters, digits and _ . -" + (" + =" if pattern is RUN_NAME else "")
        raise ValueError(f"{what} {value!r} cannot name a folder or an MLflow key: use {allowed} "
                         "(not '.' or '..')")
    return value


def _closest(word: str, options) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (one of: {', '.join(options)})"


def registered(kind: str, name: str):
    """The registration of a component; an unknown name is a validation error with the registry's message."""
    try:
        return lookup(kind, name)
    except ValueError as error:  # unknown, or registered twice
        raise PydanticCustomError("unknown_kind", "{message}", {"message": str(error)}) from None


def validate_component_params(kind: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``name`` is a registered ``kind`` and ``params`` fit its parameter model; return the validated params."""
    return registered(kind, name).params(**params).model_dump()


class ModelSection(Strict):
    """Either ``kind`` + ``params`` (+ named ``sizes``), or a list of ``presets``."""

    kind: str | None = Field(None, description="Model kind (llama, vit, random-features, or a plugin's).")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters shared by every size.")
    sizes: dict[str, dict[str, Any]] | None = Field(
        None, description="Named sizes to sweep: each maps parameter names to the values that differ.")
    presets: list[str] | None = Field(None, description="Preset names to sweep (see `specreach models`).")

    @field_validator("sizes")
    @classmethod
    def _sizes_name_folders(cls, value):
        for size in value or {}:
            safe_name(size, "size name")
        return value

    @model_validator(mode="after")
    def _one_way(self):
        if (self.kind is None) == (self.presets is None):
            raise ValueError("give either 'kind' (with params and optional sizes) or 'presets', not both or neither")
        if self.presets is not None:
            for name in self.presets:
                if name not in PRESETS:
                    raise PydanticCustomError("unknown_preset", f"unknown preset '{{name}}'{_closest(name, PRESETS)}",
                                              {"name": name})
            if self.params or self.sizes:
                raise ValueError("'params' and 'sizes' go with 'kind', not with 'presets'")
            return self
        for overrides in (self.sizes or {"default": {}}).values():
            validate_component_params("model", self.kind, {**self.params, **overrides})
        return self

    def members(self) -> list[tuple[str, str, dict[str, Any], dict | None, float | None]]:
        """(size name, kind, params, preset parameterization or None, preset learning rate or None)."""
        if self.presets is not None:
            return [(p, PRESETS[p].kind, PRESETS[p].params, PRESETS[p].parameterization, PRESETS[p].learning_rate)
                    for p in self.presets]
        return [(size, self.kind, {**self.params, **overrides}, None, None)
                for size, overrides in (self.sizes or {"default": {}}).items()]


class DataSection(Strict):
    kind: str = Field(description="Data source kind (see `specreach plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The data source's parameters.")

    @model_validator(mode="after")
    def _known(self):
        validate_component_params("dataset", self.kind, self.params)
        return self


class DistributedSection(Strict):
    """One run trained data-parallel over local processes (``torch.distributed``, launched by its elastic
    launcher): each process takes an equal shard of every global batch; rank 0 alone writes the run."""

    processes: int = Field(1, ge=1, le=1024, description=(
        "Processes that train the run together (data-parallel, DistributedDataParallel): gloo on CPU, one GPU "
        "each with NCCL when train.device is cuda. train.batch_size stays the global batch and must divide "
        "evenly among them. 1: one process."))


class TrainSection(Strict):
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (peak, after warmup).")
    lr_per_size: dict[str, float] = Field(default_factory=dict, description="Learning rate per size name.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    warmup_steps: int = Field(0, ge=0, le=MAX_STEPS, description="Linear learning-rate warmup steps.")
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="Training batch size.")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description=(
        "Training steps (default: `epochs` passes over the data)."))
    flops: float | None = Field(None, gt=0, description=(
        "Compute budget in FLOPs, 6 · parameters · tokens: sets each size's steps (isocompute sweeps)."))
    epochs: int = Field(1, ge=1, le=10**6, description="Passes over the data when `steps` is not given.")
    grad_clip: float | None = Field(None, gt=0, description="Clip the gradient norm to this value.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Model seeds to sweep (a list, or a count n for 0 … n-1).")
    seed_params: dict[str, int] = Field(default_factory=dict, description=(
        "Dotted keys set to the run's seed plus the given offset, e.g. {data.params.teacher_seed: 1000}: "
        "parameters that should vary with the model seed."))
    data_seed: int = Field(0, description="Seed of the data order (the same for every model seed).")
    device: str = Field("cpu", description=(
        "Torch device: cpu, cuda, cuda:N, or auto (cuda where the run's machine has a GPU, else cpu; "
        "resolved where the run executes)."))
    precision: Literal["fp32", "bf16-mixed"] = Field("fp32", description=(
        "Training arithmetic: fp32, or bf16-mixed (autocast of the forward pass to bfloat16, float32 "
        "weights and optimizer). The LNP measurement and evaluations always run in float32."))
    threads: int | None = Field(None, ge=1, description=(
        "Torch CPU threads for the run (default: torch's). 1 avoids oversubscription when several runs "
        "share the cores; small models gain little from more."))
    dtype: Literal["float32", "float64", "bfloat16"] = Field("float32", description="Parameter dtype.")
    distributed: DistributedSection = Field(default_factory=DistributedSection, description=(
        "Train this run data-parallel over several local processes (see docs/scaling.md)."))
    eval_every: int | None = Field(None, ge=1, description="Evaluate on the validation pool every N steps.")
    checkpoint_every: int | None = Field(None, ge=1, description=(
        "Also write a checkpoint every N steps. Without it a run still checkpoints after every run of "
        "consecutive measured steps, every `checkpoint_minutes` and at the end."))
    checkpoint_minutes: float = Field(10.0, gt=0, le=10**6, description=(
        "Write a checkpoint when this many minutes of training passed since the last one: the most work a "
        "killed run loses, besides the measured steps (after each of which it checkpoints)."))
    keep_checkpoints: Literal["last", "final", "none"] = Field("final", description=(
        "What a finished run keeps: 'last' its last checkpoint.pt (resumable state: model, optimizer, RNG) and "
        "final.pt (the trained model); 'final' only final.pt; 'none' neither. Checkpoints are written while the "
        "run trains whatever this says."))

    @field_validator("seeds", mode="before")
    @classmethod
    def _count_means_range(cls, value):
        """``seeds: 100`` is short for seeds 0 … 99."""
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"seeds: a count must be positive, got {value}")
            if value > MAX_SEEDS:
                raise ValueError(f"seeds: {value} seeds is more than the {MAX_SEEDS} a spec may sweep")
            return list(range(value))
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int]):
        repeated = sorted({seed for seed in value if value.count(seed) > 1})
        if repeated:
            raise ValueError(f"seed{'s' * (len(repeated) > 1)} {', '.join(map(str, repeated))} given more than once: "
                             "each seed is one run")
        if len(value) > MAX_SEEDS:
            raise ValueError(f"{len(value)} seeds is more than the {MAX_SEEDS} a spec may sweep")
        out_of_range = [seed for seed in value if not -2**63 <= seed < 2**63]
        if out_of_range:
            raise ValueError(f"seed {out_of_range[0]} is out of range (a 64-bit integer)")
        return value

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]):
        for beta in value:
            if not 0 <= beta < 1:
                raise ValueError(f"AdamW betas must lie in [0, 1), got {list(value)}")
        return value

    @field_validator("lr_per_size")
    @classmethod
    def _positive(cls, value: dict[str, float]):
        for size, lr in value.items():
            if not lr > 0:
                raise ValueError(f"learning rate for size '{size}' must be positive and finite, got {lr}")
        return value

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str):
        import re

        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", value):
            raise ValueError(f"device '{value}' is not one of auto, cpu, cuda, cuda:N, mps, xpu, xpu:N")
        return value

    @model_validator(mode="after")
    def _shards_are_even(self):
        """DDP averages the ranks' mean gradients: that is the global batch's mean only for equal shards."""
        processes = self.distributed.processes
        if processes > 1:
            if self.batch_size % processes:
                raise ValueError(f"train.batch_size: {self.batch_size} does not divide evenly among the "
                                 f"{processes} processes of train.distributed; give a multiple of {processes}")
            if self.device != "auto" and not re.fullmatch(r"cpu|cuda", self.device):
                raise ValueError(f"train.device: {self.device} with train.distributed.processes {processes}: each "
                                 "process takes one device of its own (GPU i for local rank i); give cuda, cpu or auto")
        return self

    @model_validator(mode="after")
    def _mixed_precision_keeps_float32_weights(self):
        if self.precision == "bf16-mixed" and self.dtype != "float32":
            raise ValueError(f"precision bf16-mixed autocasts a float32 model; dtype {self.dtype} leaves nothing to "
                             "autocast: set dtype: float32 (or precision: fp32)")
        return self


class LogWindows(Strict):
    """Log-spaced windows (paper, Appendix C.1): every step of an initial phase is measured and kept
    as its own window, then ``windows`` non-overlapping windows of ``steps_per_window`` consecutive
    steps follow at logarithmically spaced steps up to the end of training. A run too short to hold
    them all is refused, never given shorter windows."""

    initial_steps: int = Field(1, ge=0, le=MAX_STEPS, description=(
        "Steps 0 … initial_steps − 1, each measured and kept as its own window (the paper plots its "
        "first 40 steps un-averaged; the default measures step 0 alone)."))
    windows: int = Field(8, ge=0, le=100_000, description="Logarithmically spaced windows after the initial steps.")
    steps_per_window: int = Field(1, ge=1, le=MAX_STEPS, description="Consecutive measured steps in each window.")

    def measured_steps(self, total_steps: int) -> int:
        return self.initial_steps + self.windows * self.steps_per_window


class EveryWindows(Strict):
    """Uniform windows: ``steps_per_window`` consecutive steps starting at steps 0, every, 2·every, …
    (only whole windows: one that would run past the end of training is left out)."""

    every: int = Field(ge=1, le=MAX_STEPS, description="Steps from the start of one window to the start of the next.")
    steps_per_window: int = Field(1, ge=1, le=MAX_STEPS, description=(
        "Consecutive measured steps in each window (≤ every)."))

    @model_validator(mode="after")
    def _no_overlap(self):
        if self.steps_per_window > self.every:
            raise ValueError(f"steps_per_window ({self.steps_per_window}) must not exceed every ({self.every}): "
                             "windows would overlap")
        return self

    def measured_steps(self, total_steps: int) -> int:
        return len(range(0, total_steps - self.steps_per_window + 1, self.every)) * self.steps_per_window


def measured_step_count(schedule: "LogWindows | EveryWindows | list[int]", total_steps: int) -> int:
    """How many steps ``schedule`` measures in a run of ``total_steps`` (counted, not listed)."""
    return len(set(schedule)) if isinstance(schedule, list) else schedule.measured_steps(total_steps)


def check_measured_step_count(schedule: "LogWindows | EveryWindows | list[int]", total_steps: int) -> None:
    count = measured_step_count(schedule, total_steps)
    if count > MAX_MEASURED_STEPS:
        raise ValueError(f"measure.schedule: measures {count:,} of the {total_steps:,} training steps, more than the "
                         f"{MAX_MEASURED_STEPS:,} a run may measure (each measurement costs several training steps); "
                         "measure in windows further apart (a larger 'every', or log-spaced windows)")


class MeasureSection(Strict):
    enabled: bool = Field(True, description="Measure the LNP components at all.")
    estimator: str = Field("hutchinson", description="Estimator name (see `specreach plugins`).")
    options: dict[str, Any] = Field(default_factory=dict, description="The estimator's own parameters.")
    probes: int | None = Field(None, ge=1, le=MAX_PROBES, description=(
        "Probes per batch (estimators that draw probes). Each costs about a third of a training step."))
    target_rse: float | None = Field(None, gt=0, lt=1, description=(
        "Adaptive K: each measurement's probes planned from the previous one's error so that N (and with it P) has "
        "this relative standard error, e.g. 0.02; `probes` is then K of the first measurement. K is fixed before its "
        "probes are drawn, so each reported standard error stays that of K independent probes. Logged per "
        "measurement as probes_a / probes_b."))
    max_probes: int = Field(32, ge=2, le=MAX_PROBES, description="The most probes per batch an adaptive K plans.")
    schedule: LogWindows | EveryWindows | list[int] = Field(default_factory=LogWindows, description=(
        "Log-spaced windows `{initial_steps, windows, steps_per_window}`, uniform windows "
        "`{every, steps_per_window}`, or an explicit list of steps."))
    validation_size: int | None = Field(None, ge=1, le=10**9, description=(
        "Samples of the validation pool to draw B from."))
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH, description=(
        "Measurement batch size for B (default: train batch)."))
    cross_batch: bool = Field(True, description="B from the validation pool (true) or B = A (false).")
    fixed_batch: bool = Field(False, description=(
        "A is the validation pool's first `batch_size` samples at every measured step instead of the training "
        "batch: the same inputs at initialization and after training (with cross_batch: false, B = A)."))
    verify: bool = Field(True, description=(
        "At the run's first measurement, the fast path's self-check on two samples: each alone gives its outputs in "
        "the batch (coupled samples fail the run), and the per-sample norms equal plain autograd's (a mismatch fails "
        "the run naming the parameter groups). See `specreach check-model`."))

    @field_validator("schedule")
    @classmethod
    def _steps_in_range(cls, value):
        if isinstance(value, list):
            bad = [step for step in value if not 0 <= step < MAX_STEPS]
            if bad:
                raise ValueError(f"measured steps count from 0; {bad[0]} is not a training step")
        return value

    @model_validator(mode="after")
    def _estimator_known(self):
        estimator = registered("estimator", self.estimator)
        if self.options or estimator.params_known:  # built-in estimators accept no options by default
            estimator.params(**self.options)
        if self.probes is not None and not estimator.attribute("uses_probes", False):
            raise ValueError(f"estimator '{self.estimator}' draws no probes; remove 'probes'")
        if self.target_rse is not None and not estimator.attribute("uses_probes", False):
            raise ValueError(f"estimator '{self.estimator}' draws no probes, so it has no probe error to target; "
                             "remove 'target_rse'")
        return self


class ProbeSection(Strict):
    """Linear probes after training: a trained and a random backbone, frozen, with a new linear head."""

    backbones: list[Literal["trained", "random"]] = Field(
        default_factory=lambda: ["trained", "random"], min_length=1, description="Which backbones to probe.")
    checkpoint: Path | None = Field(None, description="Probe this checkpoint instead of the run's trained model.")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Probe training steps (default: as the main training).")


class SinkChoice(Strict):
    """A sink with options: ``{kind: tensorboard, params: {folder: tb}}`` (a plain name takes the defaults)."""

    kind: str = Field(description="A registered sink (see `specreach plugins`).")
    params: dict[str, Any] = Field(default_factory=dict, description="The sink's own parameters.")

    @model_validator(mode="after")
    def _known(self):
        validate_component_params("sink", self.kind, self.params)
        return self


class TrackingSection(Strict):
    experiment: str | None = Field(None, min_length=1, max_length=250, pattern=r"^[^\x00-\x1f]*$",
                                   description="MLflow experiment (default: the spec's name).")
    uri: str | None = Field(None, description="Tracking URI (default: a SQLite store in the output directory).")
    run_name: str | None = Field(None, min_length=1, max_length=250, pattern=r"^[^\x00-\x1f]*$",
                                 description="Name of the parent run (default: the spec's name).")
    enabled: bool = Field(True, description=(
        "Record to the sinks at all (the metrics table and status.json are always written)."))
    sinks: list[SinkChoice] = Field(default_factory=lambda: [SinkChoice(kind="mlflow")], description=(
        "Where runs record besides their metrics table: mlflow, tensorboard, or a plugin's sinks, by name "
        "or as {kind, params}."))

    @field_validator("sinks", mode="before")
    @classmethod
    def _names_are_choices(cls, value):
        """``[mlflow, tensorboard]`` is short for ``[{kind: mlflow}, {kind: tensorboard}]``."""
        if isinstance(value, list):
            return [{"kind": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("sinks")
    @classmethod
    def _each_once(cls, value: list[SinkChoice]):
        kinds = [choice.kind for choice in value]
        repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
        if repeated:
            raise ValueError(f"sink '{repeated[0]}' is named more than once")
        return value

    @property
    def uses_mlflow(self) -> bool:
        return self.enabled and any(choice.kind == "mlflow" for choice in self.sinks)

    def plugin_sinks(self) -> tuple[SinkChoice, ...]:
        """The sinks a run opens through the registry (all but MLflow, which the run session opens itself)."""
        return tuple(choice for choice in self.sinks if choice.kind != "mlflow") if self.enabled else ()


class ExecutionSection(Strict):
    """How the runs are executed: one after another here (``local``), in worker processes on this
    machine (``processes``), as tasks on a Ray cluster (``ray``), or by a plugin's executor. The
    choice never changes what a run computes."""

    kind: str = Field("local", description="Executor (local, processes, ray, or a plugin's).")
    params: dict[str, Any] = Field(default_factory=dict, description="The executor's own parameters.")

    @model_validator(mode="after")
    def _known(self):
        validate_component_params("executor", self.kind, self.params)
        return self


class Spec(Strict):
    name: str = Field(max_length=200, description="Experiment name (letters, digits, _ . -): its output folder.")
    model: ModelSection
    parameterization: Parameterization = Field(default_factory=Parameterization,
                                               description="standard, or mup with base_width.")
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    measure: MeasureSection = Field(default_factory=MeasureSection)
    probe: ProbeSection | None = Field(None, description="Optional linear-probe phase.")
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    execution: ExecutionSection = Field(default_factory=ExecutionSection,
                                        description="Where and how the runs execute (default: one after another here).")
    output: Path = Field(Path("runs"), description="Output directory; each spec writes into output/name.")
    sweep: dict[str, list[Any]] = Field(default_factory=dict, description=(
        "Dotted keys and the values to sweep them over, e.g. {data.params.alpha: [1.5, 2, 3]}: one set of "
        "runs per combination (times sizes and seeds)."))

    @field_validator("name")
    @classmethod
    def _name_is_a_folder(cls, value: str):
        return safe_name(value, "name")

    @model_validator(mode="after")
    def _schedule_fits_the_steps(self):
        schedule, steps = self.measure.schedule, self.train.steps
        if steps is None or not self.measure.enabled or any(key.startswith(("train.", "measure."))
                                                             for key in self.sweep):
            return self  # the steps are known per run only: the run checks
        check_measured_step_count(schedule, steps)
        if isinstance(schedule, list):
            late = sorted(step for step in schedule if step >= steps)
            if late:
                raise ValueError(f"measure.schedule: step {late[0]} is not a training step: train.steps is {steps} "
                                 f"(steps 0 … {steps - 1})")
        elif isinstance(schedule, LogWindows):
            needed = schedule.initial_steps + schedule.windows * schedule.steps_per_window
            if needed > steps:
                raise ValueError(f"measure.schedule: {schedule.windows} windows of {schedule.steps_per_window} steps "
                                 f"after {schedule.initial_steps} single steps need {needed} training steps; "
                                 f"train.steps is {steps}")
        return self

    @model_validator(mode="after")
    def _checkpoints_kept_for_probes(self):
        if self.train.keep_checkpoints == "none" and self.probe is not None and self.probe.checkpoint is None \
                and "trained" in self.probe.backbones:
            raise ValueError("train.keep_checkpoints: 'none' deletes final.pt, which the probes of the trained "
                             "backbone read; keep 'final' (or give probe.checkpoint)")
        return self

    @model_validator(mode="after")
    def _sizes_have_rates(self):
        sizes = [member[0] for member in self.model.members()]
        unknown = set(self.train.lr_per_size) - set(sizes)
        if unknown:
            # Cross-section problems name their key first: config.py points at its line.
            raise ValueError(f"train.lr_per_size: names sizes that the model does not sweep: {sorted(unknown)} "
                             f"(sizes: {sizes}); when the sizes were replaced, drop it (override ~train.lr_per_size)")
        return self

    @model_validator(mode="after")
    def _learning_rates_fit_float32(self):
        """AdamW's first step moves weights by lr / (1 − β1) and decays them by lr · weight_decay: past
        float32's range torch fails with 'value cannot be converted to type float without overflow'."""
        train = self.train
        rates = {"train.lr": train.lr, **{f"train.lr_per_size.{size}": lr for size, lr in train.lr_per_size.items()}}
        for key, lr in rates.items():
            largest = max(lr / (1 - train.betas[0]), lr * train.weight_decay)
            if largest > FLOAT32_MAX:
                raise ValueError(f"{key}: {lr:g} makes AdamW's first update {largest:.3g}, beyond float32's range "
                                 f"({FLOAT32_MAX:.3g}), so the run could not take a step; learning rates are "
                                 "typically 1e-4 to 1e-2")
        return self

    @model_validator(mode="after")
    def _measurement_batches_fit_the_pool(self):
        """B is drawn from the validation pool: a batch larger than the pool would silently be the pool."""
        measure = self.measure
        if not measure.enabled or not (measure.cross_batch or measure.fixed_batch):
            return self
        data_params = registered("dataset", self.data.kind).params(**self.data.params)
        sizes = {"data.params.validation_size": getattr(data_params, "validation_size", None),
                 "measure.validation_size": measure.validation_size}
        pool = min((size, key) for key, size in sizes.items() if isinstance(size, int)) if any(
            isinstance(size, int) for size in sizes.values()) else None
        batch = measure.batch_size or self.train.batch_size
        processes = self.train.distributed.processes
        if batch % processes:
            raise ValueError(f"measure.batch_size: {batch} does not divide evenly among the {processes} processes of "
                             f"train.distributed (each measures its shard of B); give a multiple of {processes}")
        if pool is not None and batch > pool[0]:
            given = f"{batch}" if measure.batch_size else f"unset, so train.batch_size ({batch}),"
            raise ValueError(f"measure.batch_size: {given} is more than the {pool[0]} samples of the validation "
                             f"pool ({pool[1]}) that batch B is drawn from; set measure.batch_size to at most "
                             f"{pool[0]}, or enlarge {pool[1]}")
        return self

    @model_validator(mode="after")
    def _run_names_fit_the_file_system(self):
        """Each run is a folder named ``<sweep values>-<size>-seed<seed>[-probe-…]``."""
        parts = {f"sweep.{key}": max(len(f"{key.split('.')[-1]}={sweep_value_label(v)}-") for v in values)
                 for key, values in self.sweep.items() if values}
        parts.update({f"model.sizes.{size}" if self.model.presets is None else "model.presets": len(size)
                      for size, *_ in self.model.members()})
        longest_size = max((length for key, length in parts.items() if key.startswith("model.")), default=0)
        length = sum(length for key, length in parts.items() if key.startswith("sweep.")) + longest_size \
            + len("-seed") + max(len(str(seed)) for seed in self.train.seeds) \
            + (len("-probe-trained") if self.probe is not None else 0)
        if length > MAX_FOLDER_NAME:
            culprit = max(parts, key=lambda key: parts[key])
            raise ValueError(f"{culprit}: makes run names of {length} characters, but a folder's name holds at most "
                             f"{MAX_FOLDER_NAME} on common file systems; shorten it")
        return self

    @model_validator(mode="after")
    def _sweeps_apply(self):
        if self.train.steps is not None and self.train.flops is not None:
            raise ValueError("train.flops: give either train.steps or train.flops, not both")
        self._refuse_too_many_runs()
        for key, values in self.sweep.items():
            if not values:
                raise ValueError(f"sweep.{key}: give at least one value")
            if key.split(".")[0] in ("name", "sweep", "output", "execution", "tracking"):
                raise ValueError(f"sweep.{key}: '{key.split('.')[0]}' cannot be swept")
            if not NAME.fullmatch(key):
                raise ValueError(f"sweep.{key}: a swept key is a dotted path of names")
            labels = [sweep_value_label(value) for value in values]
            for value, label in zip(values, labels):
                if not RUN_NAME.fullmatch(f"{key.split('.')[-1]}={label}"):
                    raise ValueError(f"sweep.{key}: value {value!r} cannot name a run folder: sweep values that "
                                     "name runs are numbers, booleans or names of letters, digits and _ . + -")
            repeated = sorted({label for label in labels if labels.count(label) > 1})
            if repeated:
                raise ValueError(f"sweep.{key}: value {repeated[0]} is given more than once")
        for assignments in sweep_combinations(self.sweep):
            with_values(self, assignments)  # every combination must make a valid spec
        if self.train.seed_params:
            with_values(self, {key: self.train.seeds[0] + offset for key, offset in self.train.seed_params.items()},
                        what="train.seed_params")
        return self

    def _refuse_too_many_runs(self) -> None:
        """Counted before anything is expanded: a sweep of 3 keys × 100 values is a million runs."""
        combinations = 1
        for values in self.sweep.values():
            combinations *= max(1, len(values))
        sizes, seeds = len(self.model.members()), len(self.train.seeds)
        per_run = 1 + (len(self.probe.backbones) if self.probe is not None else 0)
        runs = combinations * sizes * seeds * per_run
        if runs > MAX_RUNS:
            what = " × ".join([f"{combinations:,} sweep combinations"] * bool(self.sweep)
                              + [f"{sizes} size{'s' * (sizes > 1)}", f"{seeds} seed{'s' * (seeds > 1)}"]
                              + [f"{per_run} runs each (probes)"] * (per_run > 1))
            raise ValueError(f"sweep: {what} make {runs:,} runs, more than the {MAX_RUNS:,} one spec may expand to; "
                             "sweep fewer values, or split the experiment into several specs")


def sweep_value_label(value: Any) -> str:
    """How a swept value appears in run names: ``1e-3`` as ``0.001``, ``True`` as ``true``."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def sweep_combinations(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the swept values, in order (one empty combination without a sweep)."""
    combinations: list[dict[str, Any]] = [{}]
    for key, values in sweep.items():
        combinations = [{**combination, key: value} for combination in combinations for value in values]
    return combinations


def with_values(spec: "Spec", assignments: dict[str, Any], what: str = "sweep") -> "Spec":
    """A copy of ``spec`` with dotted keys set (and no sweep), validated again."""
    if not assignments:
        return spec
    data = spec.model_dump(mode="json")
    data["sweep"] = {}  # applied: the copy is one member of the sweep
    if "lr" not in spec.train.model_fields_set:
        del data["train"]["lr"]  # still unset, so that the presets' rates apply (expand)
    if what == "train.seed_params":
        data["train"]["seed_params"] = {}  # applied for one seed
    for key, value in assignments.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"{what}.{key}: '{part}' is not a section that '{key}' can reach")
            node = node[part]
        node[last] = value
    try:
        return Spec.model_validate(data)
    except ValidationError as error:
        reasons = "; ".join(_reason(item) for item in error.errors())
        raise ValueError(f"{what}.{next(iter(assignments))}: with {assignments}: {reasons}") from None


def _reason(item: dict) -> str:
    where = ".".join(str(part) for part in item["loc"] if not (isinstance(part, str) and part[:1].isupper()))
    message = item["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
