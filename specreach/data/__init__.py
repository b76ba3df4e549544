"""Data sources: a training stream ordered by a data seed and a fixed validation pool."""

from specreach.data.base import Batch, DataInfo, DataSource, Task
from specreach.data.cifar5m import Cifar5m
from specreach.data.digits import Digits
from specreach.data.powerlaw_teacher import PowerlawTeacher
from specreach.data.simplestories import SimpleStories
from specreach.data.text import PydocText, TextFile, pydoc_bytes

__all__ = [
    "Batch", "DataInfo", "DataSource", "Task",
    "Cifar5m", "Digits", "PowerlawTeacher", "PydocText", "SimpleStories", "TextFile", "pydoc_bytes",
]
