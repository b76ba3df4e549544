"""specreach: where in the eNTK spectrum does learning happen? The LNP decomposition, measured."""

from specreach.lnp import LNPResult, available_estimators, measure_lnp, measure_lnp_at_step

__all__ = ["LNPResult", "available_estimators", "measure_lnp", "measure_lnp_at_step"]
__version__ = "0.1.0"
