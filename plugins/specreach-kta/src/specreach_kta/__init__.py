"""An example specreach plugin: the ``kta`` estimator and the ``xor-quadrants`` data source.

The entry point (``[project.entry-points.specreach]`` in pyproject.toml) names this module;
specreach registers it with pluggy, which calls each ``@hookimpl`` below with a ``register``
callable, the same way the built-in estimators and data sources register.
"""

from __future__ import annotations

from specreach.plugins import hookimpl
from specreach_kta.kta import KernelTargetAlignment
from specreach_kta.xor_quadrants import XorQuadrants

__all__ = ["KernelTargetAlignment", "XorQuadrants"]


@hookimpl
def register_estimators(register):
    register(KernelTargetAlignment)


@hookimpl
def register_datasets(register):
    register(XorQuadrants)
