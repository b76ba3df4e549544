"""The run: executors, the run session (training loop with scheduled measurement, checkpoints),
the monitor and the sinks that record it all."""

__all__ = ["Engine", "Executor", "LNPMonitor", "MlflowSink", "MonitorConfig", "RunResult", "RunSpec", "Sink",
           "Sinks", "TableSink", "expand", "run_session"]

# Imported on first use: the spec layer reaches specreach.engine.runs and .executors without torch.
_LAZY = {
    "Engine": "specreach.engine.engine", "Executor": "specreach.engine.executors",
    "LNPMonitor": "specreach.engine.monitor", "MonitorConfig": "specreach.engine.monitor",
    "RunResult": "specreach.engine.runs", "RunSpec": "specreach.engine.runs", "expand": "specreach.engine.runs",
    "Sink": "specreach.engine.sinks", "Sinks": "specreach.engine.sinks", "TableSink": "specreach.engine.sinks",
    "MlflowSink": "specreach.engine.sinks", "run_session": "specreach.engine.session",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'specreach.engine' has no attribute {name!r}")
