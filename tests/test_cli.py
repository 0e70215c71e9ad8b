"""Error messages name the key, and the small CLI items of issue 19 (items 2 and 7).

Each case runs ``python -m evalcam`` and asserts the exact line and the exit code.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest
from conftest import ROOT, cli, last_line

from evalcam.metrics import ALIASES, METRICS

ALL_METRICS = ", ".join(sorted({*METRICS, *ALIASES}))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["metrics=[pointing,nope]"],
            f"evalcam: error: unknown metric 'nope' in metrics=[pointing,nope]; valid names: {ALL_METRICS}",
        ),
        (
            ["dataset.limit=abc"],
            "evalcam: error: dataset.limit=abc is not an integer; "
            "use e.g. dataset.limit=50 or dataset.limit=null",
        ),
        (
            ["root=/data/voc"],
            "evalcam: error: root= is not a top-level key; did you mean dataset.root=/data/voc?",
        ),
        (
            ["dataset=voc2007", "limit=5"],
            "evalcam: error: limit= is not a top-level key; did you mean dataset.limit=5?",
        ),
        (["batch_size=big"], "evalcam: error: batch_size=big is not an integer; use e.g. batch_size=50"),
        (
            ["metric=[pointing]"],
            "evalcam: error: unknown key metric= in metric=[pointing]; did you mean metrics=?",
        ),
        (
            ["-m", "method=gradcam,gradcan"],
            "evalcam: error: unknown method 'gradcan' in method=gradcam,gradcan;",
        ),
        (
            ["dataset.rot=/x"],
            "evalcam: error: unknown key dataset.rot= in dataset.rot=/x; did you mean dataset.root=?",
        ),
    ],
)
def test_a_bad_override_names_its_key_in_one_line(tmp_path, args, line):
    done = cli("run", *args, f"output_dir={tmp_path}", "mlflow=false")
    assert done.returncode == 1
    assert last_line(done).startswith(line)
    assert "Traceback" not in done.stderr and "HYDRA_FULL_ERROR" not in done.stderr


def test_a_missing_root_names_the_key_and_the_environment_variable(tmp_path):
    done = cli(
        "run", "dataset=voc2007", f"output_dir={tmp_path}", "mlflow=false", env={"EVALCAM_VOC_ROOT": ""}
    )
    assert done.returncode == 1
    assert last_line(done).startswith(
        "evalcam: error: voc2007: no root given; "
        "pass dataset.root=PATH or set $EVALCAM_VOC_ROOT; expected ROOT/"
    )


def test_version_and_layers_help():
    from evalcam import __version__

    done = cli("--version")
    assert (done.returncode, done.stdout.strip()) == (0, f"evalcam {__version__}")
    done = cli("layers", "--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: python -m evalcam layers [model=NAME] [model.weights=PATH]")
    done = cli("layers", "modle=vgg16")
    assert done.returncode == 1
    assert last_line(done) == (
        "evalcam: error: layers takes model=NAME and model.weights=PATH, not modle=vgg16; see layers --help"
    )


def test_a_file_store_mlflow_refuses_ends_in_one_line_with_the_sqlite_uri(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    store = tmp_path / "mlruns"
    (run_dir / "summary.json").write_text(
        json.dumps({"experiment": "x", "run_name": "r", "tracking_uri": f"file://{store}", "metrics": {}})
    )
    done = cli("log", str(run_dir), env={"MLFLOW_ALLOW_FILE_STORE": ""})
    assert done.returncode == 1
    assert last_line(done) == (
        f"evalcam: error: this MLflow refuses the file store file://{store}; use "
        f"tracking_uri=sqlite:///{tmp_path}/mlruns.db (`mlflow migrate-filestore` moves runs already there) "
        f"or set MLFLOW_ALLOW_FILE_STORE=true"
    )
    assert "Traceback" not in done.stderr


def test_report_refuses_to_overwrite_a_published_report_without_force():
    # reports/avg_drop.md is tracked: the refusal comes before MLflow is even asked for runs.
    done = cli("report", "avg_drop", "--tracking-uri", "sqlite:////nonexistent/never/opened.db")
    assert done.returncode == 1
    assert last_line(done) == (
        "evalcam: error: reports/avg_drop.md is tracked by git (a published report); pass --force to "
        "overwrite it, or --out DIR to write the new report elsewhere"
    )


def test_a_run_with_a_refused_file_store_stops_before_any_work(tmp_path):
    store = tmp_path / "fs"
    done = cli("run", "dataset.limit=1", f"tracking_uri=file://{store}", f"output_dir={tmp_path / 'runs'}",
               env={"MLFLOW_ALLOW_FILE_STORE": ""})  # fmt: skip
    assert done.returncode == 1
    assert last_line(done).startswith(
        f"evalcam: error: this MLflow refuses the file store file://{store}; use tracking_uri=sqlite:///"
    )
    assert not list((tmp_path / "runs").glob("*/per_image/part-*")) and not store.exists()


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's malloc"
)
def test_the_program_keeps_a_batchs_freed_memory_for_the_next_one():
    """With the `evalcam` program's malloc settings, blocks freed together (a batch's autograd graph) are
    reused by the next batch instead of going back to the OS and being page-faulted in again (glibc's
    defaults fault every page of every such batch)."""
    script = (
        "import resource, torch\n"
        "from evalcam.cli import keep_freed_memory\n"
        "assert keep_freed_memory()\n"
        "def batch():\n"
        "    blocks = [torch.ones(2 * 2**20) for _ in range(16)]  # 16 x 8 MB\n"
        "    del blocks\n"
        "batch()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5):\n"
        "    batch()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    import resource

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True, cwd=ROOT
    )
    pages = 5 * 16 * 8 * 2**20 // resource.getpagesize()
    assert int(done.stdout.strip()) < pages // 4
