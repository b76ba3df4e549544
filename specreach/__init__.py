"""specreach: where in the eNTK spectrum does learning happen? The LNP decomposition, measured."""

__all__ = ["Engine", "LNPMonitor", "LNPResult", "available_estimators", "load_spec", "measure_lnp",
           "measure_lnp_at_step"]
__version__ = "0.1.0"

# Imported on first use: the spec layer and the command line must not pay for torch and MLflow.
_LAZY = {
    "Engine": "specreach.engine", "LNPMonitor": "specreach.engine", "load_spec": "specreach.config",
    "LNPResult": "specreach.lnp", "available_estimators": "specreach.lnp", "measure_lnp": "specreach.lnp",
    "measure_lnp_at_step": "specreach.lnp",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'specreach' has no attribute {name!r}")
