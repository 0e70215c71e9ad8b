"""``python -m evalcam ui`` owns its children: it says when the server answers, and SIGTERM (what a service
manager or ``kill`` sends) stops the MLflow server, its uvicorn workers and its job runners; none is left
and the port is free again. The process tree is read from /proc here, independently of evalcam.children."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evalcam import ui

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process tree in /proc"
)

START_S = 180  # uvicorn + store migrations on 2 busy cores


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every live, non-zombie process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            text = (entry / "stat").read_text()
            fields = text[text.rindex(")") + 2 :].split()
            if fields[0] != "Z":
                table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def _tree(root: int) -> set[tuple[int, str]]:
    table = _process_table()
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start) in table.items():
            if ppid == parent:
                found.add((pid, start))
                todo.append(pid)
    return found


def _still_running(processes: set[tuple[int, str]]) -> set[tuple[int, str]]:
    table = _process_table()
    return {(pid, start) for pid, start in processes if pid in table and table[pid][1] == start}


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # gone meanwhile
        return ""


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    seen = ""
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        if selector.select(timeout=1):
            chunk = os.read(proc.stdout.fileno(), 4096).decode(errors="replace")
            if not chunk:
                break
            seen += chunk
    return seen


def test_sigterm_stops_the_server_and_every_process_it_started(tmp_path):
    port = ui.free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "evalcam", "ui", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    started: set[tuple[int, str]] = set()
    try:
        output = _read_until(proc, "MLflow UI ready", START_S)
        assert f"MLflow UI ready: http://127.0.0.1:{port}" in output, output[-3000:]
        assert ui.healthy(ui.base_url(port))  # "ready" is said only once the server answers
        started = _tree(proc.pid)
        assert len(started) >= 2, started  # the mlflow CLI and the uvicorn server below it, at least

        os.kill(proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, rest.decode(errors="replace")[-3000:]
        assert "MLflow UI stopped" in rest.decode(errors="replace")
        assert _still_running(started) == set()
        with socket.socket() as client, pytest.raises(ConnectionRefusedError):
            client.connect((ui.HOST, port))  # nothing listens any more
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((ui.HOST, port))  # and a new server can take the port
    finally:
        for pid, _ in _still_running(started | _tree(proc.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


TREE_SCRIPT = """
import subprocess, sys, time
sys.path.insert(0, {root!r})
from evalcam.children import become_subreaper, stop_tree
become_subreaper()
# A child that starts a grandchild in a session of its own (as MLflow's job runners do) and an orphan
# (its parent exits at once), then waits.
child = subprocess.Popen([sys.executable, "-c", '''
import subprocess, sys, time
subprocess.Popen(["sleep", "300"], start_new_session=True)
subprocess.Popen([sys.executable, "-c", "import subprocess; subprocess.Popen(['sleep', '301'])"]).wait()
time.sleep(300)
'''], start_new_session=True)
time.sleep(float(sys.argv[1]))
print("stopped", len(stop_tree(child, grace_s=5)), flush=True)
"""


def test_stop_tree_ends_grandchildren_in_other_sessions_and_orphans(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE_SCRIPT.format(root=str(Path(__file__).resolve().parents[1])))
    proc = subprocess.Popen([sys.executable, str(script), "15"], stdout=subprocess.PIPE, text=True)
    started: set[tuple[int, str]] = set()
    try:
        deadline = time.monotonic() + 60
        sleeps: set[int] = set()
        while time.monotonic() < deadline and not (len(sleeps) == 2 and len(started) == 3):
            time.sleep(0.5)
            started = _tree(proc.pid)
            sleeps = {pid for pid, _ in started if _command(pid) == "sleep"}
        # the child and its two sleeps, one re-parented to the owner once its own parent exited
        assert len(started) == 3 and len(sleeps) == 2, started
        out, _ = proc.communicate(timeout=120)
        assert out.startswith("stopped"), out
        assert _still_running(started) == set()
    finally:
        for pid, _ in _still_running(started):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
