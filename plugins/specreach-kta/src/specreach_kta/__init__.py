"""An example specreach plugin: the ``kta`` estimator and the ``xor-quadrants`` data source.

The entry point (``[project.entry-points.specreach]`` in pyproject.toml) names this module;
specreach registers it with pluggy, which calls each ``@hookimpl`` below with a ``register``
callable, the same way the built-in estimators and data sources register.

Components are registered by name ("module:Class"), and their parameter models live in modules
that import no torch, so loading the plugin and validating a spec import nothing heavy: each
component's module is imported the first time a run or a measurement uses it.
"""

from __future__ import annotations

from specreach.plugins import hookimpl


@hookimpl
def register_estimators(register):
    register("specreach_kta.kta:KernelTargetAlignment", name="kta", uses_probes=False,
             params="specreach.params.estimators:EntkParams",  # entk's options
             summary="entk plus the kernel-target alignment of the eNTK with the loss gradient")


@hookimpl
def register_datasets(register):
    register("specreach_kta.xor_quadrants:XorQuadrants", name="xor-quadrants",
             params="specreach_kta.params:XorQuadrantsParams",
             summary="noisy images whose class is an XOR of two bright quadrants: no linear model of the pixels learns it")
