"""``python -m evalcam ui``: the MLflow UI on 127.0.0.1 for the store ``python -m evalcam run`` logs to.

With ``tracking_uri=null`` the runner logs to MLflow's *client* default store, which MLflow resolves
against the current folder (MLflow 3: ``sqlite:///mlflow.db``, or ``./mlruns`` when that folder already
holds a file store; MLflow 2: ``./mlruns``). ``mlflow ui`` picks its own default the same way, but only
as long as client and server agree across versions, so the UI is started with the client's resolved URI
passed explicitly: whatever ``python -m evalcam run`` used in this folder is what the UI shows.

The artifact root is matched the same way. ``mlflow ui`` would give the experiments it creates
``mlflow-artifacts:/`` locations, which only a client talking HTTP to that server can write; a later plain
``python -m evalcam run`` (straight into the store, no server) into such an experiment then fails to log
its artifacts. So new experiments get the local folder a direct client would use (``./mlruns``), which
both kinds of client can write and the server serves to the UI.

The wrapper owns what it starts (:mod:`evalcam.children`): SIGTERM or SIGINT (Ctrl-C) stops the MLflow
server, its uvicorn workers and its job runners, and nothing it started outlives it. It says when the
server answers (``/health``), not merely when it was launched.

The server listens on the loopback interface only; exposing it is a deliberate act (``mlflow server``
with ``--allowed-hosts``), not something a convenience command should do. That is also what makes the
local artifact folder safe: every client of a loopback server is on this machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from evalcam.children import become_subreaper, stop_tree

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# MLflow >= 3 opens experiments in its GenAI view unless told otherwise; this query parameter selects the
# classic runs table (it is read from the URL by the UI's workflow-type switch).
RUNS_VIEW_QUERY = "workflowType=machine_learning"
# `mlflow ui` options that say where artifacts go; when the user gives any, their choice stands.
ARTIFACT_OPTIONS = (
    "--default-artifact-root",
    "--artifacts-destination",
    "--serve-artifacts",
    "--no-serve-artifacts",
    "--artifacts-only",
)


@dataclass(frozen=True)
class UIOptions:
    port: int = DEFAULT_PORT
    backend_store_uri: str | None = None
    mlflow_args: tuple[str, ...] = ()  # passed on to `mlflow ui` unchanged, e.g. ("--workers", "1")


def parse_args(argv: Sequence[str]) -> UIOptions:
    """``[--port N] [--backend-store-uri URI] [other mlflow ui options]`` -> :class:`UIOptions`."""
    parser = argparse.ArgumentParser(
        prog="python -m evalcam ui",
        description="Start the MLflow UI on 127.0.0.1 for the store `python -m evalcam run` logs to. "
        "Options not listed here are passed on to `mlflow ui`.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument(
        "--backend-store-uri",
        default=None,
        help="default: the store `python -m evalcam run` uses in this folder "
        "($MLFLOW_TRACKING_URI, else MLflow's local default)",
    )
    options, rest = parser.parse_known_args(list(argv))
    if not 0 < options.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {options.port}")
    if any(arg == "--host" or arg.startswith("--host=") for arg in rest):
        raise ValueError(
            "evalcam ui serves on 127.0.0.1 only; to expose MLflow on other interfaces run "
            "`mlflow server --host ... --allowed-hosts ...` yourself"
        )
    return UIOptions(port=options.port, backend_store_uri=options.backend_store_uri, mlflow_args=tuple(rest))


def default_backend_store_uri() -> str:
    """The tracking URI a plain ``python -m evalcam run`` in the current folder logs to.

    This is MLflow's own resolution (``$MLFLOW_TRACKING_URI``, else the installed version's local default,
    made absolute against the current folder), i.e. exactly what :func:`evalcam.tracking.log_run_dir`
    ends up using when the config says ``tracking_uri: null``.
    """
    import mlflow

    return mlflow.get_tracking_uri()


def is_remote(uri: str) -> bool:
    return urllib.parse.urlparse(uri).scheme in {"http", "https", "databricks"}


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = HOST) -> int:
    """A port on ``host`` that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def client_artifact_root(backend_store_uri: str) -> str:
    """Where a client logging straight into ``backend_store_uri`` (no server) puts the artifacts of the
    experiments it creates: inside a file store; for database stores MLflow's local default folder
    (``./mlruns``), made absolute against the current folder as the client does."""
    if urllib.parse.urlparse(backend_store_uri).scheme in ("", "file"):
        return backend_store_uri
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH

    return str(Path(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH).resolve())


def server_command(options: UIOptions, backend_store_uri: str) -> list[str]:
    """The ``mlflow ui`` command line: loopback host, explicit store, the artifact root a direct client
    would use (unless the user chose one), the user's extra options last."""
    artifacts: list[str] = []
    if not any(arg.split("=", 1)[0] in ARTIFACT_OPTIONS for arg in options.mlflow_args):
        artifacts = ["--default-artifact-root", client_artifact_root(backend_store_uri)]
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--host",
        HOST,
        "--port",
        str(options.port),
        "--backend-store-uri",
        backend_store_uri,
        *artifacts,
        *options.mlflow_args,
    ]


def base_url(port: int) -> str:
    return f"http://{HOST}:{port}"


def runs_url(base: str, experiment_id: str) -> str:
    """Page listing an experiment's runs (the classic runs table, not the GenAI overview)."""
    return f"{base}/#/experiments/{experiment_id}/runs?{RUNS_VIEW_QUERY}"


def compare_runs_url(base: str, run_ids: Sequence[str], experiment_ids: Sequence[str]) -> str:
    """MLflow's compare-runs page: ``#/compare-runs?runs=[...]&experiments=[...]``.

    Same query shape as the UI's own link (``Routes.getCompareRunPageRoute``: JSON lists of ids), checked
    against MLflow 3.17's bundled UI.
    """
    runs = urllib.parse.quote(json.dumps(list(run_ids)))
    experiments = urllib.parse.quote(json.dumps(list(experiment_ids)))
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"


def _store_exists(uri: str) -> bool:
    """Whether a local store already holds data; listing it must not create an empty one as a side effect."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///") :]
        return path not in ("", ":memory:") and Path(urllib.parse.unquote(path)).is_file()
    if parsed.scheme in ("", "file"):
        return Path(urllib.parse.unquote(parsed.path)).is_dir()
    return False


def experiment_links(backend_store_uri: str, base: str) -> list[tuple[str, str]]:
    """``(experiment name, runs page URL)`` for each experiment with runs in a local store."""
    if not _store_exists(backend_store_uri):
        return []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=backend_store_uri)
    links = []
    for experiment in client.search_experiments():
        if client.search_runs([experiment.experiment_id], max_results=1):
            links.append((experiment.name, runs_url(base, experiment.experiment_id)))
    return links


class _Stop(BaseException):
    """Raised by the signal handlers so the main loop unwinds into the clean-up; a BaseException (like
    KeyboardInterrupt) so that no ``except Exception`` on the way, e.g. around the experiment links,
    swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signum)


def healthy(base: str) -> bool:
    """Whether the MLflow server at ``base`` answers its health check."""
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def serve(argv: Sequence[str]) -> int:
    """Run the MLflow UI in the foreground until SIGINT/SIGTERM, then stop every process it started.

    Returns 0 after such a stop, else the server's own exit status (e.g. when it could not start).
    """
    options = parse_args(argv)
    uri = options.backend_store_uri or default_backend_store_uri()
    if is_remote(uri):
        # Runs went to a tracking server, which already serves the UI: starting a second one would show
        # an empty local store and mislead.
        raise ValueError(
            f"runs are logged to the tracking server {uri} (MLFLOW_TRACKING_URI); open it in a browser, "
            f"or pass --backend-store-uri for a local store"
        )
    if port_in_use(options.port):
        raise ValueError(f"port {options.port} on {HOST} is already in use; choose another with --port N")
    base = base_url(options.port)
    print(f"MLflow UI for {uri}\n  starting on {base} ...", flush=True)
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)  # the server must use --backend-store-uri, nothing else
    # MLflow 3's job runner (GenAI scorers, periodic jobs: 8 more processes) is not needed to browse runs;
    # it stays available to whoever sets the variable.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    become_subreaper()
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    proc: subprocess.Popen | None = None
    try:
        # Its own session: a terminal's Ctrl-C reaches the wrapper only, which then stops the whole tree
        # in order, instead of every process receiving SIGINT at once.
        proc = subprocess.Popen(server_command(options, uri), env=env, start_new_session=True)
        ready = False
        while proc.poll() is None:
            if not ready and healthy(base):
                ready = True
                _announce(uri, base)
            time.sleep(0.2)
        return int(proc.returncode)
    except _Stop as stop:
        log.debug("stopping the MLflow UI on %s", stop)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc is not None:
            # Signals are ignored meanwhile: a second Ctrl-C must not abandon the clean-up half way.
            ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in previous}
            try:
                stopped = stop_tree(proc)
            finally:
                for sig, handler in ignored.items():
                    signal.signal(sig, handler)
            print(f"MLflow UI stopped ({len(stopped) + 1} process(es) ended).", flush=True)


def _announce(uri: str, base: str) -> None:
    print(f"MLflow UI ready: {base}", flush=True)
    try:
        links = experiment_links(uri, base)
    except Exception as err:  # the links are a convenience; the UI itself lists every experiment anyway
        log.debug("could not list experiments of %s: %s", uri, err)
        links = []
    for name, url in links:
        print(f"  runs of {name}: {url}")
    print("(Ctrl-C stops it)", flush=True)
