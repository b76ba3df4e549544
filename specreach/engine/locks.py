"""Exclusive locks on output folders: one process writes a spec's output (and each run's folder) at a
time, and a second is refused with a message naming the holder.

The lock is ``flock`` on a ``.lock`` file in the folder: the kernel releases it when the holder
exits, however it exits (SIGKILL and out-of-memory included), so a lock is never left stale. The
file holds who took it (process id, host, command, time) for the message a second process gets.
:func:`holder_of` names the holder of any lock file from the kernel's own table (``/proc/locks``),
for locks whose holders write nothing (the MLflow store's).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """``with FolderLock(folder, "output folder"):`` — held for the block, refused at once if taken."""

    def __init__(self, folder: str | Path, what: str):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self._handle = None

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(handle)
            handle.close()
            raise FolderBusy(f"{self.what} {self.folder} is in use by {holder}; wait for it to finish, or stop it "
                             f"(kill {self._pid_of(holder)}) and resume with `specreach run --resume`") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime(
                "%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:500]}))
            handle.flush()
        except OSError as error:  # a full disk: name the file
            with contextlib.suppress(OSError):  # closing flushes again, and fails again
                handle.close()
            raise OSError(error.errno, error.strerror, str(self.path)) from None
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def _holder(handle) -> str:
        handle.seek(0)
        try:
            info = json.loads(handle.read() or "{}")
        except json.JSONDecodeError:
            info = {}
        if not info.get("pid"):
            return "another process"
        command = f", `{info['command']}`" if info.get("command") else ""
        return f"process {info['pid']} on {info.get('host', '?')} (since {info.get('since', '?')}{command})"

    @staticmethod
    def _pid_of(holder: str) -> str:
        parts = holder.split()
        return parts[1] if len(parts) > 1 and parts[0] == "process" else "it"


def holder_of(path: Path) -> str:
    """``process PID (`COMMAND`)`` holding a lock on ``path``, from /proc/locks (Linux); else a guess."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks") as table:
            entries = [line.split() for line in table]
    except OSError:
        return "another process"
    for fields in entries:  # "1: FLOCK  ADVISORY  WRITE 7166 fe:00:2163462 0 EOF" ("->" marks a waiter)
        if "->" in fields or len(fields) < 6:
            continue
        pid, device_inode = fields[4], fields[5]
        if device_inode.rsplit(":", 1)[-1] == str(inode) and pid.isdigit() and int(pid) != os.getpid():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                command = ""
            return f"process {pid}" + (f" (`{command.strip()[:200]}`)" if command.strip() else "")
    return "another process"
