"""The built-in data sources, registered through the same hook as any plugin."""

from specreach.data.cifar5m import Cifar5m
from specreach.data.digits import Digits
from specreach.data.powerlaw_teacher import PowerlawTeacher
from specreach.data.simplestories import SimpleStories
from specreach.data.text import PydocText, TextFile
from specreach.plugins import hookimpl


@hookimpl
def register_datasets(register):
    register(PowerlawTeacher)
    register(Cifar5m)
    register(SimpleStories)
    register(TextFile)
    register(PydocText)
    register(Digits)
