"""Comparing methods in the MLflow UI, checked in a real (headless Chromium) browser.

The user's path, in one throwaway working folder: ``python -m evalcam ui`` (no store given, so MLflow's
local default in that folder) on a free 127.0.0.1 port; Grad-CAM evaluated on 3 images of the embedded
sample set and logged over HTTP to that server (runner with ``tracking_uri=http://127.0.0.1:PORT``); then
a plain ``python -m evalcam run method=center`` in the same folder, no tracking URI, which logs straight
into MLflow's default store. Both runs must appear side by side in the UI: the browser opens the
experiment's runs page and MLflow's compare-runs view and reads the run names and
``weak_loc/top1_loc_error`` values as the page shows them, in each run's column.
Screenshots go to ``$EVALCAM_TEST_ARTIFACTS`` (default ``tests/artifacts/``) and to the test's tmp_path.

Chromium is Debian's ``chromium`` package (``/usr/bin/chromium``), driven by Playwright for Python with
``executable_path`` (Playwright's own browser download is never used; ``$EVALCAM_CHROMIUM`` points
elsewhere). Outside CI a missing browser or Playwright skips;
in CI (``CI`` set) it fails, so the check cannot silently disappear there.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import compose_config

from evalcam import ui

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("EVALCAM_CHROMIUM", "/usr/bin/chromium"))
IN_CI = bool(os.environ.get("CI"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
METRIC = "weak_loc/top1_loc_error"
# Differs between any two runs (wall time), so it also proves each value sits in its own run's column
# (Grad-CAM and the centre baseline can tie on 3 images' localization error).
TIMING = "run/seconds"
METHODS = ("gradcam", "center")
# Pinned metrics keep the compare view's metric table short, whatever the default metric list becomes.
RUN_ARGS = ("dataset.limit=3", "n_examples=1", "metrics=[weak_loc]")
SERVER_START_S = 180  # uvicorn + store migrations on 2 busy cores
PAGE_S = 60

# The server's helpers (job runner, telemetry) are not needed for browsing and only cost processes/time.
QUIET_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}


def unavailable(reason: str) -> None:
    """Skip locally, fail in CI: CI installs the browser, so its absence there is a broken setup."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set, so the browser test must run)")
    pytest.skip(reason)


def artifact_dir() -> Path:
    path = Path(os.environ.get("EVALCAM_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_config(tmp: Path, *overrides: str) -> dict:
    return compose_config(f"output_dir={tmp / 'runs'}", "progress=false", "device=cpu", *overrides)


def mlflow_display(value: float) -> str:
    """A metric value as MLflow's UI prints it (``Utils.formatMetric``: 3 decimals below 10, 2 below 100,
    then 1; exponent form below 0.001; JavaScript number text, so 1.0 -> "1"). Re-stated independently
    from the UI's source rather than called, so the test notices if the page shows something else."""
    magnitude = abs(value)
    if value == 0:
        return "0"
    if magnitude < 0.001:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent):+d}"
    decimals = 3 if magnitude < 10 else 2 if magnitude < 100 else 1
    scale = 10**decimals
    rounded = math.floor(value * scale + 0.5) / scale  # JS Math.round: half up
    text = repr(rounded)
    return text[:-2] if text.endswith(".0") else text


def test_mlflow_display_matches_the_ui_format():
    # Expected strings: MLflow 3.17.2's bundled formatMetric, run under node on these very values.
    values = (0.0, 1.0, 1 / 3, 2 / 3, 0.5, 0.1234, 0.0015, 10.3749, 123.456, 0.00012346)
    assert [mlflow_display(v) for v in values] == [
        "0",
        "1",
        "0.333",
        "0.667",
        "0.5",
        "0.123",
        "0.002",
        "10.37",
        "123.5",
        "1.235e-4",
    ]


def wait_healthy(url: str, proc: subprocess.Popen, log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"MLflow server exited with {proc.returncode}:\n{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"MLflow server not healthy after {timeout:.0f}s:\n{log_file.read_text()[-3000:]}")


def stop_process_group(proc: subprocess.Popen) -> None:
    """End the server we started: its own process group (uvicorn workers included), TERM then KILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    # Whatever is left of the group (a stuck leader, or workers that outlived it) is killed outright.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def plain_env() -> dict[str, str]:
    """The environment of a user who set no tracking URI (MLflow itself exports one after
    ``mlflow.set_tracking_uri`` in this test process, so it is removed explicitly)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, **QUIET_SERVER_ENV}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workdir")


@pytest.fixture(scope="module")
def mlflow_server(workdir) -> Iterator[str]:
    """``python -m evalcam ui`` in ``workdir`` on a free loopback port, with the default store."""
    port = ui.free_port()
    log_file = workdir / "server.log"
    cmd = [sys.executable, "-m", "evalcam", "ui", "--port", str(port), "--workers", "1"]
    with log_file.open("w") as log:
        # A new session makes the server the leader of its own process group, so the finalizer can end
        # exactly it and the workers it forks, nothing else.
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=plain_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = ui.base_url(port)
        wait_healthy(url, proc, log_file, SERVER_START_S)
        assert f"sqlite:///{workdir / 'mlflow.db'}" in log_file.read_text(), "not the folder's default store"
        yield url
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def two_runs(mlflow_server, workdir) -> dict[str, dict]:
    """gradcam logged over HTTP, then center logged by a plain CLI run into the folder's default store;
    what the tracking server holds for each."""
    from mlflow.tracking import MlflowClient

    from evalcam.runner import run

    client = MlflowClient(tracking_uri=mlflow_server)
    config = make_config(workdir, "method=gradcam", *RUN_ARGS, f"tracking_uri={mlflow_server}")
    result = run(config)  # first, so the *server* creates the experiment (and picks its artifact root)
    assert result.mlflow_run_id, f"gradcam was not logged to {mlflow_server}"
    logged = {"gradcam": (result.mlflow_run_id, result.metrics)}

    cmd = [sys.executable, "-m", "evalcam", "run", "method=center", *RUN_ARGS]
    cmd += [f"output_dir={workdir / 'runs'}", "progress=false", "device=cpu"]
    done = subprocess.run(cmd, cwd=workdir, env=plain_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (summary_file,) = (workdir / "runs").glob("center__*/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary.get("mlflow_run_id"), f"the plain CLI run was not logged:\n{done.stderr[-3000:]}"
    logged["center"] = (summary["mlflow_run_id"], summary["metrics"])

    runs = {}
    for method in METHODS:
        run_id, metrics = logged[method]
        stored = client.get_run(run_id)  # via the server: the CLI run must be in the store it serves
        # The value the UI must show is the one the server holds, which must be the runner's own.
        assert stored.data.metrics[METRIC] == pytest.approx(metrics[METRIC], abs=1e-12)
        runs[method] = {
            "id": run_id,
            "experiment_id": stored.info.experiment_id,
            "name": stored.info.run_name,
            "values": {key: stored.data.metrics[key] for key in (METRIC, TIMING)},
        }
    return runs


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    """A fresh headless Chromium profile whose requests may only go to 127.0.0.1."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} not found (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright for Python is not installed (pip install playwright)")
    profile = tmp_path_factory.mktemp("chromium_profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 2000},
            timeout=PAGE_S * 1000,
        )

        def loopback_only(route):
            host = urllib.parse.urlparse(route.request.url).hostname
            if host == ui.HOST or route.request.url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                route.abort()

        context.route("**/*", loopback_only)
        context.set_default_timeout(PAGE_S * 1000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


# Text cells of the visual rows that start with `label`: every innermost element with text, seen on the
# page, whose vertical centre lies within the label's box and that starts right of it, left to right,
# with its left edge.
# This reads the page the way a person does, whether MLflow renders a <table> or a virtualized grid.
ROW_CELLS_JS = """
(label) => {
  // Seen = on top at its own centre: excludes rows clipped away inside a scrolled container, whose
  // boxes still overlap whatever is drawn there.
  const visible = (e) => {
    const r = e.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) return false;
    const hit = document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);
    return hit !== null && (hit === e || e.contains(hit));
  };
  const text = (e) => (e.innerText || e.textContent || "").trim();
  const leaf = (e) => text(e) !== "" && ![...e.children].some((c) => text(c) !== "");
  const all = [...document.querySelectorAll("body *")].filter((e) => visible(e) && leaf(e));
  return all.filter((e) => text(e) === label).map((labelEl) => {
    const box = labelEl.getBoundingClientRect();
    return all
      .filter((e) => e !== labelEl)
      .filter((e) => {
        const r = e.getBoundingClientRect(), y = (r.top + r.bottom) / 2;
        return y > box.top && y < box.bottom && r.left >= box.right - 1;
      })
      .sort((a, b) => a.getBoundingClientRect().left - b.getBoundingClientRect().left)
      .map((e) => [text(e), e.getBoundingClientRect().left]);
  });
}
"""
COLUMN_SLACK_PX = 24


def _poll(page, label: str, pick, what: str):
    """Read the rows labelled ``label`` until ``pick(rows)`` accepts one or PAGE_S passes (the UI renders
    asynchronously); the failure names what the page showed instead."""
    deadline = time.monotonic() + PAGE_S
    while True:
        rows = page.evaluate(ROW_CELLS_JS, label)
        for row in rows:
            found = pick(row)
            if found is not None:
                return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not shown within {PAGE_S}s; rows labelled {label!r}: {rows}")
        time.sleep(0.5)


def run_columns(page, run_ids: list[str]) -> list[float]:
    """Left edges of the runs' columns in the compare view, found from the row listing their ids."""

    def pick(row):
        return [x for _, x in row] if [t for t, _ in row] == run_ids else None

    return _poll(page, "Run ID:", pick, f"a 'Run ID:' row with {run_ids}")


def column_values(page, label: str, columns: list[float]) -> list[str]:
    """What the row ``label`` shows in each run's column (cells aligned with that run's column), once two
    readings half a second apart agree (the grids settle after a scroll)."""

    def pick(row):
        cells = [[t for t, x in row if abs(x - col) < COLUMN_SLACK_PX] for col in columns]
        return [c[0] for c in cells] if all(len(c) == 1 for c in cells) else None

    what = f"a row {label!r} with one value per run column"
    shown = _poll(page, label, pick, what)
    deadline = time.monotonic() + PAGE_S
    while time.monotonic() < deadline:
        time.sleep(0.5)
        again = _poll(page, label, pick, what)
        if again == shown:
            return shown
        shown = again
    pytest.fail(f"row {label!r} kept changing: last {shown}")


# MLflow 3.17's compare view clips its metric table at about seven rows (overflow: hidden, no scrollbar);
# rows are sorted by name, so a row may sit in the clipped part. A person turns the mouse wheel over the
# values until the row shows. MLflow moves the metric names to where the values were one wheel event
# earlier, so a last one-pixel turn brings the names to the values (one pixel apart, well inside a row).
# The JS returns the pixels still to scroll and where the value grid is (null: not rendered yet).
ROW_OFFSET_JS = """
(label) => {
  const el = [...document.querySelectorAll("a")].find((a) => a.textContent.trim() === label);
  if (!el) return null;
  let clip = el.parentElement;
  while (clip && clip.scrollHeight <= clip.clientHeight + 1) clip = clip.parentElement;
  if (!clip || clip === document.scrollingElement) return [0, 0, 0];
  const r = el.getBoundingClientRect(), c = clip.getBoundingClientRect();
  const delta = Math.max(0, r.bottom - c.bottom + 2) - Math.max(0, c.top - r.top);
  const values = [...document.querySelectorAll("*")].find(
    (g) => g !== clip && g.clientHeight === clip.clientHeight && g.scrollHeight === clip.scrollHeight
  );
  const box = (values || clip).getBoundingClientRect();
  return [delta, (box.left + box.right) / 2, (box.top + box.bottom) / 2];
}
"""


def reveal_row(page, label: str) -> None:
    deadline = time.monotonic() + PAGE_S
    while time.monotonic() < deadline:
        found = page.evaluate(ROW_OFFSET_JS, label)
        if found is not None and abs(found[0]) < 1:
            return
        if found is not None:
            page.mouse.move(found[1], found[2])
            page.mouse.wheel(0, found[0])
            time.sleep(0.5)
            page.mouse.wheel(0, 1)
        time.sleep(0.5)
    pytest.fail(f"metric row {label!r} not rendered inside the table within {PAGE_S}s")


def settle(page, ready: str | None = None) -> None:
    """Give lazily rendered parts (``ready``, a CSS selector) a bounded chance to appear, so the
    screenshot is complete. Not an assertion: what is checked was read from the page before."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if ready:
        with contextlib.suppress(PlaywrightTimeout):
            page.locator(ready).first.wait_for(state="visible", timeout=15_000)


def save_screenshot(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    shutil.copy(path, artifact_dir() / name)
    return path


@pytest.mark.slow
@pytest.mark.browser
def test_compare_two_methods_in_mlflow_ui(browser_page, two_runs, mlflow_server, tmp_path):
    # browser_page comes first: without a browser the test skips before the server and runs are made.
    page = browser_page
    experiments = {r["experiment_id"] for r in two_runs.values()}
    assert len(experiments) == 1, "both methods belong in the same <dataset>/<model> experiment"
    (experiment_id,) = experiments
    names = [two_runs[m]["name"] for m in METHODS]
    # The run name carries what sets the run apart from the defaults (here the image limit).
    assert names == [f"{m}·efficientnet_lite0·sample (limit=3)" for m in METHODS]

    # The experiment's runs table lists both methods.
    page.goto(ui.runs_url(mlflow_server, experiment_id))
    for name in names:
        page.get_by_text(name, exact=True).first.wait_for(state="visible")
    save_screenshot(page, "mlflow_experiment_runs.png", tmp_path)

    # The compare view shows the runs side by side, one column each, in the order requested.
    run_ids = [two_runs[m]["id"] for m in METHODS]
    page.goto(ui.compare_runs_url(mlflow_server, run_ids, [experiment_id]))
    page.get_by_text(f"Comparing {len(run_ids)} Runs", exact=False).first.wait_for(state="visible")
    # The parameter table is long; folded, it no longer pushes the metric table out of the window.
    page.get_by_role("button", name="Parameters", exact=True).click()
    columns = run_columns(page, run_ids)
    assert column_values(page, "Run Name:", columns) == names
    for key in (TIMING, METRIC):
        reveal_row(page, key)
        shown = column_values(page, key, columns)
        expected = [mlflow_display(two_runs[m]["values"][key]) for m in METHODS]
        assert shown == expected, f"{key}: page shows {shown}, the server holds {expected}"
    settle(page, ready=".js-plotly-plot")
    shot = save_screenshot(page, "mlflow_compare_runs.png", tmp_path)
    assert shot.stat().st_size > 10_000  # a real rendering, not an empty page


@pytest.mark.slow
def test_ui_serves_both_runs_artifacts(two_runs, mlflow_server):
    """What the UI's artifact viewer fetches (``/get-artifact``) for the HTTP-logged and the directly
    logged run alike: their config and example figure."""
    for method, info in two_runs.items():
        query = urllib.parse.urlencode({"run_uuid": info["id"], "path": "config.yaml"})
        with urllib.request.urlopen(f"{mlflow_server}/get-artifact?{query}", timeout=30) as response:
            assert f"name: {method}" in response.read().decode()
        query = urllib.parse.urlencode({"run_uuid": info["id"], "path": "figures/examples.png"})
        with urllib.request.urlopen(f"{mlflow_server}/get-artifact?{query}", timeout=30) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"


def test_ui_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ui.parse_args([]) == ui.UIOptions(port=5000, backend_store_uri=None, mlflow_args=())
    options = ui.parse_args(["--port", "5123", "--backend-store-uri", "sqlite:///x.db", "--workers", "1"])
    assert options == ui.UIOptions(5123, "sqlite:///x.db", ("--workers", "1"))
    assert ui.server_command(options, "sqlite:///x.db")[1:] == [
        *("-m", "mlflow", "ui", "--host", "127.0.0.1", "--port", "5123"),
        *("--backend-store-uri", "sqlite:///x.db"),
        # new experiments get the folder a direct (serverless) client would use, so both can log to them
        *("--default-artifact-root", str(tmp_path / "mlruns")),
        *("--workers", "1"),
    ]
    # A file store keeps artifacts inside itself, as a direct client of it does.
    file_store = (tmp_path / "store").as_uri()
    assert ui.server_command(ui.parse_args([]), file_store)[-2:] == ["--default-artifact-root", file_store]
    # An artifact location the user chose is left alone.
    chosen = ui.parse_args(["--artifacts-destination=/data/art"])
    assert "--default-artifact-root" not in ui.server_command(chosen, "sqlite:///x.db")
    for bad in (["--host", "0.0.0.0"], ["--host=0.0.0.0"]):
        with pytest.raises(ValueError, match=r"127\.0\.0\.1 only"):
            ui.parse_args(bad)
    with pytest.raises(ValueError, match="between 1 and 65535"):
        ui.parse_args(["--port", "70000"])


def test_ui_refuses_a_remote_store_and_a_busy_port():
    import socket

    with pytest.raises(ValueError, match="open it in a browser"):
        ui.serve(["--backend-store-uri", "http://127.0.0.1:9"])
    with socket.socket() as busy:
        busy.bind((ui.HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert ui.port_in_use(port)
        with pytest.raises(ValueError, match=f"port {port} .* already in use"):
            ui.serve(["--port", str(port), "--backend-store-uri", "sqlite:///unused.db"])


def test_compare_runs_url_has_mlflows_query_shape():
    url = ui.compare_runs_url("http://127.0.0.1:5000", ["a1", "b2"], ["7"])
    fragment = urllib.parse.urlparse(url).fragment
    route, query = fragment.split("?", 1)
    assert route == "/compare-runs"
    params = dict(urllib.parse.parse_qsl(query))
    assert params == {"runs": '["a1", "b2"]', "experiments": '["7"]'}


def test_experiment_links_list_experiments_with_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = "http://127.0.0.1:5000"
    assert ui.experiment_links(store, base) == []
    assert not (tmp_path / "mlflow.db").exists(), "listing must not create an empty store"
    client = MlflowClient(tracking_uri=store)
    used = client.create_experiment("sample/efficientnet_lite0", artifact_location=str(tmp_path / "art"))
    client.create_experiment("empty", artifact_location=str(tmp_path / "art2"))
    client.set_terminated(client.create_run(used, run_name="gradcam·efficientnet_lite0·sample").info.run_id)
    # MLflow's own "Default" experiment and the empty one have no runs, so no link.
    assert ui.experiment_links(store, base) == [
        ("sample/efficientnet_lite0", f"{base}/#/experiments/{used}/runs?workflowType=machine_learning")
    ]
