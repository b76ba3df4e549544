"""The small shared description of data that data sources, models and the spec layer all use
(imports nothing heavy): a data source's :class:`DataInfo`, and what a task asks of a model's
outputs.

A component's parameter model may declare sizes without the component being imported: a data
source's ``Params.task_outputs()`` (the task and the outputs per position it needs) and a model's
``Params.declared_outputs()``. Where both are declared, ``specreach validate`` checks that the
model can learn the task before anything is built; every run checks it again on the built model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["next-token", "classification", "regression"]


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data to fit it."""

    task: Task
    input_shape: tuple[int, ...]  # one sample's input: (T,) tokens, (C, H, W) image, (D,) vector
    vocab: int | None = None  # next-token: number of distinct tokens
    classes: int | None = None  # classification: number of classes
    train_samples: int | None = None  # samples per epoch (None: unbounded, or unknown until the data is read)

    def task_outputs(self) -> TaskOutputs:
        size = {"next-token": self.vocab, "classification": self.classes, "regression": 1}[self.task]
        if size is None:
            raise ValueError(f"a {self.task} data source must give its "
                             f"{'vocab' if self.task == 'next-token' else 'classes'} in info()")
        return TaskOutputs(self.task, size)


@dataclass(frozen=True)
class TaskOutputs:
    """A task and the outputs per position it needs: the vocabulary, the classes, or 1 (regression)."""

    task: Task
    size: int


def outputs_problem(declared: int, needed: TaskOutputs, model_name: str, data_name: str) -> str | None:
    """Why a model with ``declared`` outputs per position cannot learn the task (None: it can). A
    language model may have a larger vocabulary than its data uses."""
    if needed.task == "next-token" and declared < needed.size:
        return (f"model '{model_name}' has a vocabulary of {declared} but data '{data_name}' has {needed.size} "
                f"tokens; set model params vocab: {needed.size} (or leave vocab out)")
    if needed.task != "next-token" and declared != needed.size:
        return (f"model '{model_name}' has {declared} outputs but task '{needed.task}' of data '{data_name}' needs "
                f"{needed.size}" + (f" (its {needed.size} classes)" if needed.task == "classification" else ""))
    return None
