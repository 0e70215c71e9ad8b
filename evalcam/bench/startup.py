"""What a user waits for besides the batch loop: start-up, a one-image run, logging, and a whole run's
images/s against the bare decode + forward + gradient floor of the same images.

Every figure comes from fresh processes (``python -m evalcam ...``), so imports are counted as a user pays
them. CPU seconds (user + system of the child) are reported beside wall seconds: on a loaded machine
wall time mostly measures the other processes, CPU time measures evalcam.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def measure(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall and CPU seconds of one child process; its exit code and the last line it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "returncode": done.returncode,
        "last_line": lines[-1] if lines else "",
    }


def _evalcam(*args: str) -> list[str]:
    return [sys.executable, "-m", "evalcam", *args]


def fixed_costs(workdir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """``--help``, ``import torch``, a one-image run with MLflow logging, and ``evalcam log`` of it again."""
    workdir.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    common = [f"output_dir={workdir / 'runs'}", f"tracking_uri={store}", "progress=false", "n_examples=1"]
    out: dict[str, Any] = {
        "help": measure(_evalcam("--help")),
        "import_torch": measure([sys.executable, "-c", "import torch"]),
        # The first run into a new MLflow store also creates its tables (alembic migrations): a cost paid
        # once per store, so the second run (another method, same store) is what every later run pays.
        "run_1_image_new_store": measure(_evalcam("run", "dataset.limit=1", *common, *(overrides or []))),
        "run_1_image": measure(
            _evalcam("run", "dataset.limit=1", "method=center", *common, *(overrides or []))
        ),
    }
    summaries = sorted((workdir / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    if summaries:
        summary = json.loads(summaries[-1].read_text())
        out["run_loop_s"] = summary["metrics"].get("run/seconds")
        out["log_again"] = measure(_evalcam("log", str(summaries[-1].parent)))
    return out


def end_to_end(workdir: Path, images: int, overrides: list[str] | None = None) -> dict[str, Any]:
    """A whole ``evalcam run`` of ``images`` images (default method, weak_loc, MLflow logging) in a child
    process, against the floor of the same images in a second fresh child: decode + preprocess + one
    forward + the gradient of each top-k score at the target layer (what top-k Grad-CAM cannot avoid).

    Both children start alike, with the ``evalcam`` program's malloc settings
    (:func:`evalcam.cli.keep_freed_memory`) and this process's thread count. The floor ran in this process
    until it was seen to fault ~1 M pages per 200 images there (after the benchmark's other tables) against
    ~0.4 M in a fresh process, which made the loop look faster than its floor."""
    workdir.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    args = [f"dataset.limit={images}", f"output_dir={workdir / 'runs'}", f"tracking_uri={store}",
            "progress=false", "device=cpu", *(overrides or [])]  # fmt: skip
    run = measure(_evalcam("run", *args))
    code = (
        "import json, sys; from evalcam.bench.startup import floor_pass; "
        "print(json.dumps(floor_pass(json.loads(sys.argv[1]), int(sys.argv[2]))))"
    )
    command = [sys.executable, "-c", code, json.dumps(args), str(torch.get_num_threads())]
    child = subprocess.run(command, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the end-to-end floor's process failed: {last}")
    floor = json.loads(child.stdout.strip().splitlines()[-1])
    summaries = sorted((workdir / "runs").glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    loop_s = json.loads(summaries[-1].read_text())["metrics"].get("run/seconds") if summaries else None
    return {
        "images": floor["images"],
        "run": run,
        "run_loop_s": loop_s,
        "floor_s": floor["seconds"],
        "floor_cpu_s": floor["cpu_seconds"],
        "threads": torch.get_num_threads(),
        "env_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def floor_pass(args: list[str], threads: int) -> dict[str, Any]:
    """The end-to-end floor of a run composed from ``args`` (run in a fresh process by :func:`end_to_end`):
    ``{"images", "seconds", "cpu_seconds"}``. The batch's graph is freed before the next batch, as the
    explainers free theirs."""
    from omegaconf import OmegaConf

    from evalcam.cli import keep_freed_memory
    from evalcam.config import compose_run_config
    from evalcam.data import Sample, build_dataset
    from evalcam.models import load_model
    from evalcam.models.chunked import fast_layout
    from evalcam.models.layers import resolve_layer

    keep_freed_memory()
    torch.set_num_threads(max(1, int(threads)))
    config = OmegaConf.to_container(compose_run_config(args), resolve=True)
    assert isinstance(config, dict)
    dataset_cfg = {k: v for k, v in config["dataset"].items() if k != "name" and v is not None}
    bundle = load_model(
        config["model"]["name"], device="cpu", target_layer=config["model"].get("target_layer")
    )
    layer = resolve_layer(bundle.model, str(bundle.target_layer))
    batch_size, topk = int(config["batch_size"]), int(config["topk"])
    wall, cpu = time.perf_counter(), time.process_time()
    dataset = build_dataset(config["dataset"]["name"], **dataset_cfg)
    count = 0
    store: dict[str, torch.Tensor] = {}
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images_ = [s.image for s in samples if isinstance(s, Sample)]
        # in the layout the CAM explainers run in (channels-last on the CPU): the floor, not a slower one
        x = fast_layout(bundle.model, bundle.preprocess(images_, bundle.device))
        handle = layer.register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
        try:
            logits = bundle.model(x)
        finally:
            handle.remove()
        top = logits.topk(topk, dim=1).indices
        for k in range(topk):
            score = logits.gather(1, top[:, k : k + 1]).sum()
            # the last gradient frees the graph, as the explainers' does: the next batch reuses its memory
            torch.autograd.grad(score, store["a"], retain_graph=k < topk - 1)
        del logits, x, top
        store.clear()
        count += len(images_)
    return {"images": count, "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


# Cheap methods of different families for --sweep: the points differ in what they explain, not in cost.
SWEEP_METHODS = (
    "gradcam",
    "gradcampp",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "cam",
    "backprop",
    "center",
    "random",
)


def warm_store(uri: str) -> None:
    """Create the MLflow store's tables (a cost paid once per store) so a timed sweep measures what
    every later sweep pays."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def sweep(workdir: Path, points: int, images: int, overrides: list[str] | None = None) -> dict[str, Any]:
    """A ``run -m`` sweep of ``points`` methods (``SWEEP_METHODS``) over ``images`` images each, one child
    process, into an MLflow store whose tables exist: its wall time against the sum of its points' batch
    loops (``run/seconds``), i.e. what the points pay besides their loops."""
    if not 1 <= points <= len(SWEEP_METHODS):
        raise ValueError(f"--sweep takes 1 to {len(SWEEP_METHODS)} points, not {points}")
    workdir.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    warm_store(store)
    methods = ",".join(SWEEP_METHODS[:points])
    args = ["-m", f"method={methods}", f"dataset.limit={images}", f"output_dir={workdir / 'runs'}",
            f"tracking_uri={store}", "progress=false", *(overrides or [])]  # fmt: skip
    run = measure(_evalcam("run", *args))
    loops = []
    for path in sorted((workdir / "runs").glob("*/summary.json")):
        loops.append(json.loads(path.read_text())["metrics"].get("run/seconds"))
    return {"points": points, "images": images, "run": run, "loops_s": loops}


def format_sweep(result: dict[str, Any]) -> str:
    run, loops = result["run"], [s for s in result["loops_s"] if s is not None]
    head = f"sweep of {result['points']} points x {result['images']} images (`run -m`, one process)"
    if run["returncode"] or len(loops) != result["points"]:
        return f"{head}: {len(loops)} of {result['points']} points finished: {run['last_line']}"
    total = sum(loops)
    return (
        f"{head}: {run['wall_s']:.1f} s wall / {run['cpu_s']:.1f} s CPU; sum of its batch loops "
        f"(run/seconds) {total:.1f} s -> wall / loops {run['wall_s'] / total:.2f}x (target <= 1.5x)"
    )


def format_fixed_costs(costs: dict[str, Any]) -> str:
    run = costs["run_1_image"]
    torch_cpu = costs["import_torch"]["cpu_s"]
    help_ = costs["help"]
    lines = [
        f"start-up: `evalcam --help` {help_['wall_s']:.2f} s wall / {help_['cpu_s']:.2f} s CPU; "
        f"`import torch` {torch_cpu:.2f} s CPU",
        "one-image run (method=center) logged to an existing MLflow store: "
        f"{run['wall_s']:.1f} s wall / {run['cpu_s']:.1f} s CPU "
        f"= {run['cpu_s'] - torch_cpu:.1f} s CPU beyond importing torch"
        + (f" (its batch loop: {costs['run_loop_s']:.2f} s)" if costs.get("run_loop_s") is not None else ""),
    ]
    first = costs.get("run_1_image_new_store")
    if first:
        lines.append(
            "  the same into a new MLflow store (creates its tables): "
            f"{first['wall_s']:.1f} s wall / {first['cpu_s']:.1f} s CPU"
        )
    for what in (run, first or {}):
        if what.get("returncode"):
            lines.append(f"  a run failed: {what['last_line']}")
    if "log_again" in costs:
        again = costs["log_again"]
        lines.append(
            f"`evalcam log` of that run again: {again['wall_s']:.1f} s wall / {again['cpu_s']:.1f} s CPU"
        )
    return "\n".join(lines)


def format_end_to_end(result: dict[str, Any]) -> str:
    run, n = result["run"], result["images"]
    if run["returncode"]:
        return f"end to end: the run failed: {run['last_line']}"
    floor_rate = n / result["floor_s"]
    lines = [
        f"end to end ({n} images, decode to MLflow): {n / run['wall_s']:.2f} images/s wall "
        f"({run['wall_s']:.1f} s); decode + forward + top-k gradient floor {floor_rate:.2f} images/s "
        f"-> whole run / floor {n / run['wall_s'] / floor_rate:.2f}x"
    ]
    if result.get("run_loop_s"):
        loop_rate = n / result["run_loop_s"]
        lines.append(
            f"  batch loop alone: {loop_rate:.2f} images/s -> loop / floor {loop_rate / floor_rate:.2f}x"
        )
    return "\n".join(lines)
