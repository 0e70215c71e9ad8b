"""Owning a process tree: every process a command started, found through ``/proc``, stopped on request.

``python -m evalcam ui`` starts ``mlflow ui``, which starts uvicorn, its workers and (MLflow 3) job runners,
some of them in sessions of their own, so neither the direct child nor its process group is the whole
tree. The owner marks itself a *child subreaper* (Linux ``PR_SET_CHILD_SUBREAPER``), so a descendant
whose parent exits is re-parented to the owner instead of to init and stays findable; the tree is then
every process whose parent chain leads to the owner. Processes are remembered with their start time, so
a recycled PID is never signalled. Off Linux the tree is the direct child and its process group.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36

# (pid, start time in clock ticks since boot): a process, not just a number the kernel may reuse.
Process = tuple[int, int]


def become_subreaper() -> bool:
    """Ask Linux to re-parent orphaned descendants to this process; False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[int, int] | None:
    """``(parent pid, start time)`` of a live process, None once it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may contain spaces and parentheses
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> list[Process]:
    """Every live process below ``root`` (children, their children, ...)."""
    parents: dict[int, list[Process]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                parents.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: list[Process] = []
    todo = [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def alive(process: Process) -> bool:
    stat = _stat(process[0])
    return stat is not None and stat[1] == process[1]


def _signal(process: Process, signum: int) -> None:
    if alive(process):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(process[0], signum)


def stop_tree(proc: subprocess.Popen, grace_s: float = 10.0) -> list[Process]:
    """Stop ``proc`` and every process below it: SIGTERM to all (the child first, so a server shuts its
    workers down itself), SIGKILL to whatever is left after ``grace_s``. Returns the processes found."""
    tree = descendants(proc.pid) if sys.platform.startswith("linux") else []
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    for process in tree:
        _signal(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()
        tree += [p for p in descendants(os.getpid()) if p not in tree and p[0] != proc.pid]
        if proc.returncode is not None and not any(alive(p) for p in tree):
            break
        time.sleep(0.1)
    for process in tree:
        _signal(process, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the child's own group, off Linux the only handle there is
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    _reap()
    return tree


def _reap() -> None:
    """Collect exit statuses of re-parented descendants (as subreaper they are ours to wait for)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
