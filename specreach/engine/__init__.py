"""The run: training loop with scheduled measurement, sweeps, checkpoints, tracking."""

from specreach.engine.engine import Engine, RunResult
from specreach.engine.member import MemberResult, run_member
from specreach.engine.monitor import LNPMonitor
from specreach.engine.runs import RunSpec, expand

__all__ = ["Engine", "LNPMonitor", "MemberResult", "RunResult", "RunSpec", "expand", "run_member"]
