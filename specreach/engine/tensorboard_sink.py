"""The ``tensorboard`` sink: a run's metrics as TensorBoard scalars, in event files under its run
folder (``tensorboard --logdir OUTPUT/SPEC/runs`` shows every run of a spec side by side).

Events are written by ``torch.utils.tensorboard.SummaryWriter``. Event files are append-only, so
resuming keeps the no-duplicate guarantee by cutting them back: every flush (before each
checkpoint) records how many bytes of each event file are durable, the checkpoint keeps that, and
a resumed run truncates each file to its recorded length and deletes files written after the
checkpoint before it writes anything. The rows it then records again appear exactly once.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from specreach.engine.sinks import RunStart, Sink, finite_metrics

EVENT_FILES = "events.out.tfevents.*"


class TensorBoardParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    folder: str = Field("tensorboard", pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "Folder of the event files inside each run folder."))


class TensorBoardSink(Sink):
    """TensorBoard event files in each run folder."""

    name = "tensorboard"
    key = "tensorboard"
    Params = TensorBoardParams

    def __init__(self, run: RunStart, **params):
        self.params = self.Params(**params)
        self.directory = Path(run.folder) / self.params.folder
        self.lengths: dict[str, int] = {}  # event file → bytes durable at the last flush
        self._writer = None
        self._file: Path | None = None

    def _open(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            suffix = f".{uuid.uuid4().hex[:8]}"  # names this writer's file among the folder's
            self._writer = SummaryWriter(str(self.directory), filename_suffix=suffix)
            (self._file,) = self.directory.glob(EVENT_FILES + suffix)
        return self._writer

    def write(self, row):
        writer, step = self._open(), int(row["step"])
        for key, value in finite_metrics(row).items():
            writer.add_scalar(key, value, step)

    def flush(self):
        if self._writer is None:
            return
        self._writer.flush()
        with open(self._file, "rb") as handle:
            os.fsync(handle.fileno())
        self.lengths[self._file.name] = self._file.stat().st_size

    def state_dict(self):
        return {"lengths": dict(self.lengths)}

    def load_state_dict(self, state):
        """Back to a checkpoint's position (``{}``: a fresh start, no event file kept)."""
        self._close()
        self.lengths = dict(state.get("lengths", {}))
        for path in sorted(self.directory.glob(EVENT_FILES)) if self.directory.is_dir() else ():
            if path.name not in self.lengths:
                path.unlink()  # written after the checkpoint (or by an attempt before the first one)
            elif path.stat().st_size > self.lengths[path.name]:
                os.truncate(path, self.lengths[path.name])

    def status(self, status, message="", **details):
        if status != "RUNNING":
            self.flush()
            self._close()

    def _close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
