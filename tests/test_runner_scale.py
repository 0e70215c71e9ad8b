"""Scale-out and crash safety of the main job, through the real command line.

- ``torchrun`` (gloo on CPU): two processes shard the images and give the numbers of one process;
- SIGKILL in the middle of a run, then the same command again: the resumed run gives the numbers of an
  uninterrupted one, without redoing finished batches;
- Hydra's submitit launcher (the route to SLURM sweeps): a local sweep end to end, and the shipped
  ``hydra/launcher=evalcam_slurm`` config composes onto submitit's SLURM launcher.

Every run is a subprocess with one torch thread (``OMP_NUM_THREADS=1``) so that the single-process
reference and each torchrun rank run the same kernels.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import cli_pausing_after_batch

IMAGES = 6
COMMON = (
    "device=cpu",
    "mlflow=false",
    "n_examples=0",
    "progress=false",
    f"dataset.limit={IMAGES}",
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
TIMEOUT = 240


def evalcam(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "evalcam", "run", *COMMON, *overrides]


def torchrun(*target: str) -> list[str]:
    # The venv's own launcher module (a bare `torchrun` on PATH may belong to another Python); --standalone
    # picks a free rendezvous port, so concurrent test sessions do not collide.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target]


def call(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def run_dir_of(output_dir: Path) -> Path:
    dirs = [p.parent for p in output_dir.glob("*/per_image")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def parts_of(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "per_image").glob("part-*.parquet"))


def assert_same_results(run_dir: Path, reference: Path) -> None:
    """Same metrics (counts exactly, rates within 1e-9) and the same images, each evaluated once."""
    got = json.loads((run_dir / "summary.json").read_text())["metrics"]
    want = json.loads((reference / "summary.json").read_text())["metrics"]
    assert set(got) == set(want)
    for key, value in want.items():
        if key in ("run/seconds", "run/wall_seconds"):
            continue
        if key.endswith("images") or key.startswith("run/") or key.endswith("degenerate_maps"):
            assert got[key] == value, key
        else:
            assert math.isclose(got[key], value, rel_tol=0, abs_tol=1e-9), (key, got[key], value)
    table = pd.read_parquet(run_dir / "per_image.parquet").sort_values("image_id", ignore_index=True)
    expected = pd.read_parquet(reference / "per_image.parquet").sort_values("image_id", ignore_index=True)
    assert table["image_id"].is_unique
    assert table["image_id"].tolist() == expected["image_id"].tolist()
    for column in ("status", "weak_loc.top1_loc_ok", "weak_loc.top5_loc_ok", "weak_loc.top1_cls_ok"):
        assert table[column].tolist() == expected[column].tolist(), column
    assert table["pred_top5"].map(list).tolist() == expected["pred_top5"].map(list).tolist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted single-process run of the sample set."""
    tmp = tmp_path_factory.mktemp("reference")
    call(evalcam("batch_size=2", f"output_dir={tmp / 'runs'}"), tmp)
    run_dir = run_dir_of(tmp / "runs")
    summary = json.loads((run_dir / "summary.json").read_text())["metrics"]
    assert summary["weak_loc/images"] == IMAGES
    return run_dir


@pytest.mark.slow
def test_torchrun_two_processes_give_single_process_numbers(reference, tmp_path):
    done = call(
        torchrun("-m", "evalcam", "run", *COMMON, "batch_size=2", f"output_dir={tmp_path / 'runs'}"), tmp_path
    )
    run_dir = run_dir_of(tmp_path / "runs")
    # Both ranks did work (WORLD_SIZE/RANK from torchrun were honoured), and rank 0 merged their parts.
    assert {p.stem.split("-")[2] for p in parts_of(run_dir)} == {"000", "001"}
    assert_same_results(run_dir, reference)
    assert "destroy_process_group" not in done.stderr


# Rank 1 reads the finished images only once rank 0 has written a part of this run (or after 10 s):
# the worst case of start-up skew between ranks, made deterministic. A runner that lets rank 0 write
# before every rank has read the finished set shards a different image list on each rank.
SKEWED_START = """
import sys, time
from evalcam import results

original = results.ResultStore.done_ids

def late_done_ids(self):
    if self.rank == 1:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not list(self.parts_dir.glob("part-*-000.parquet")):
            time.sleep(0.05)
    return original(self)

results.ResultStore.done_ids = late_done_ids
from evalcam.cli import main
main(sys.argv[1:])
"""


@pytest.mark.slow
def test_torchrun_ranks_shard_the_same_image_list_under_start_skew(reference, tmp_path):
    script = tmp_path / "skewed_start.py"
    script.write_text(SKEWED_START)
    call(torchrun(str(script), "run", *COMMON, "batch_size=1", f"output_dir={tmp_path / 'runs'}"), tmp_path)
    assert_same_results(run_dir_of(tmp_path / "runs"), reference)


@pytest.mark.slow
def test_sigkill_then_rerun_gives_uninterrupted_numbers(reference, tmp_path):
    cmd = evalcam("batch_size=1", f"output_dir={tmp_path / 'runs'}")
    paused = cli_pausing_after_batch(cmd[3:], batches=2, seconds=60)  # the same `run ...` arguments
    proc = subprocess.Popen(paused, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = list((tmp_path / "runs").glob("*/per_image/part-*.parquet"))
            if len(found) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
    run_dir = run_dir_of(tmp_path / "runs")
    killed_after = parts_of(run_dir)
    # The kill landed mid-run: some batches done, the run not finished.
    assert 2 <= len(killed_after) < IMAGES
    assert not (run_dir / "summary.json").exists()
    before = {p.name: p.read_bytes() for p in killed_after}

    call(cmd, tmp_path)
    parts = parts_of(run_dir)
    # One part per image (batch_size=1): nothing evaluated twice, finished batches kept as they were.
    assert len(parts) == IMAGES
    for name, content in before.items():
        assert (run_dir / "per_image" / name).read_bytes() == content
    assert_same_results(run_dir, reference)


@pytest.mark.slow
def test_submitit_local_sweep_end_to_end(reference, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    out = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "evalcam",
        "run",
        "-m",
        "hydra/launcher=submitit_local",
        "method=gradcam,center",
        *COMMON,
        "dataset.limit=2",
        f"output_dir={out}",
    ]
    call(cmd, tmp_path)
    summaries = {}
    for path in out.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        ids = pd.read_parquet(path.parent / "per_image.parquet")["image_id"]
        summaries[summary["tags"]["method"]] = (summary["metrics"], set(ids))
    assert sorted(summaries) == ["center", "gradcam"]
    # Each job ran in its own submitit process: their logs are in the sweep's .submitit folder.
    logs = list(out.glob("hydra/multirun_*/.submitit/*/*_log.out"))
    assert len(logs) == 2, logs
    ref_table = pd.read_parquet(reference / "per_image.parquet")
    for metrics, ids in summaries.values():
        assert metrics["weak_loc/images"] == 2
        ref = ref_table[ref_table["image_id"].isin(ids)]
        assert len(ref) == 2
        # Same model on the same two images as the reference run: same classification errors.
        assert metrics["weak_loc/top1_cls_error"] == 1 - ref["weak_loc.top1_cls_ok"].mean()
        assert metrics["weak_loc/top5_cls_error"] == 1 - ref["weak_loc.top5_cls_ok"].mean()


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="evalcam.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=evalcam_slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 1
    assert launcher.partition == "gpu"
    # Requeue on time-out: the rerun resumes from the run's Parquet parts.
    assert launcher.max_num_timeout > 0
