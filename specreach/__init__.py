"""specreach: where in the eNTK spectrum does learning happen? The LNP decomposition, measured."""

from specreach.lnp import LNPResult, available_estimators, measure_lnp, measure_lnp_at_step

__all__ = ["Engine", "LNPMonitor", "LNPResult", "available_estimators", "load_spec", "measure_lnp",
           "measure_lnp_at_step"]
__version__ = "0.1.0"


def __getattr__(name):
    # The engine pulls in MLflow and the data sources: import it only when asked for.
    if name in ("Engine", "LNPMonitor"):
        from specreach import engine

        return getattr(engine, name)
    if name == "load_spec":
        from specreach.config import load_spec

        return load_spec
    raise AttributeError(f"module 'specreach' has no attribute {name!r}")
