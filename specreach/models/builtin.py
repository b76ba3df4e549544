"""The built-in model builders, registered through the same hook as any plugin."""

from specreach.models.builders import BUILDERS
from specreach.plugins import hookimpl


@hookimpl
def register_models(register):
    for builder in BUILDERS:
        register(builder)
