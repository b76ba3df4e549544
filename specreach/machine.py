"""What this machine has, found without importing torch (the spec layer stays fast): its GPUs and
its memory. Where a question cannot be answered cheaply the answer is None ("unknown"), and
callers do not refuse on it."""

from __future__ import annotations

import glob
import os
import re
import sys


def gpu_count() -> int | None:
    """CUDA (or ROCm) devices visible to this process; None when it cannot be told without torch."""
    if "torch" in sys.modules:  # already paid for: ask it
        import torch

        return torch.cuda.device_count()
    if not sys.platform.startswith("linux"):
        return None
    present = len(glob.glob("/proc/driver/nvidia/gpus/*")) or len(
        [d for d in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", d)])
    if not present and os.path.exists("/dev/kfd"):  # AMD ROCm: torch calls these cuda too
        present = len(glob.glob("/dev/dri/renderD*"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", os.environ.get("HIP_VISIBLE_DEVICES"))
    if visible is not None:
        listed = [d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")]
        present = min(present, len(listed))
    return present


def device_problem(device: str) -> str | None:
    """Why ``train.device`` cannot run on this machine, or None (it can, or it cannot be told)."""
    match = re.fullmatch(r"(cuda|mps|xpu|cpu|auto)(?::(\d+))?", device)
    if match is None:
        return None  # the spec's own validation names the valid devices
    kind, index = match.group(1), int(match.group(2) or 0)
    if kind == "cuda":
        count = gpu_count()
        if count == 0:
            return ("this machine has no CUDA GPU; run it where there is one, or set train.device=auto "
                    "(a GPU where there is one, else the CPU)")
        if count is not None and index >= count:
            return f"this machine has {count} CUDA GPU{'s' * (count != 1)} (cuda:0 … cuda:{count - 1})"
    if kind == "mps" and sys.platform != "darwin":
        return "mps is Apple's GPU backend and this machine is not a Mac; use cpu, cuda or auto"
    return None


def memory_bytes() -> int | None:
    """This machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
