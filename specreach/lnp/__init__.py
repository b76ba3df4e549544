"""The LNP mathematics: result record, estimator interface, built-in estimators, per-sample norms."""

from specreach.lnp.entk import Entk
from specreach.lnp.estimator import Estimator, NoParams, PerSampleNormEstimator
from specreach.lnp.probes import ProbeAccumulator
from specreach.lnp.exact import Exact
from specreach.lnp.hutchinson import Hutchinson
from specreach.lnp.measure import available_estimators, measure_lnp, measure_lnp_at_step
from specreach.lnp.problem import Batch, MeasurementProblem
from specreach.lnp.result import ChiNet, LNPResult, assemble_result

__all__ = [
    "Batch", "ChiNet", "Entk", "Estimator", "Exact", "Hutchinson", "LNPResult", "MeasurementProblem", "NoParams",
    "PerSampleNormEstimator", "ProbeAccumulator", "assemble_result", "available_estimators",
    "measure_lnp", "measure_lnp_at_step",
]
