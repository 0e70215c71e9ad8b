"""``run -m`` composes each sweep point's config once (evalcam.sweeper): Hydra's validation of the batch
and its messages stay, the launcher reuses the validated configs, and the runs are the ones Hydra's own
sweeper gives."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
from conftest import ROOT

from evalcam.sweeper import ValidatedConfigs


class CountingLoader:
    """Stands in for Hydra's config loader: a new object per composition, and a count of them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def load_sweep_config(self, master_config, sweep_overrides):
        self.calls.append(tuple(sweep_overrides))
        return {"overrides": list(sweep_overrides), "n": len(self.calls)}

    def get_search_path(self):
        return "search path"


def test_a_validated_config_is_handed_to_the_launch_once():
    loader = CountingLoader()
    configs = ValidatedConfigs(loader)
    master = {"master": True}
    configs.validate(master, [["method=a"], ["method=b"]])
    assert loader.calls == [("method=a",), ("method=b",)]
    first = configs.load_sweep_config(master, ["method=a"])
    assert first == {"overrides": ["method=a"], "n": 1}
    assert configs.load_sweep_config(master, ["method=b"])["n"] == 2
    assert len(loader.calls) == 2  # both launches reused the validation's configs
    # Handed out once only (the launcher writes into it): asked again, it is composed again.
    again = configs.load_sweep_config(master, ["method=a"])
    assert again is not first and len(loader.calls) == 3
    # Another master config or a job that was not validated: composed, never a kept one.
    configs.validate(master, [["method=c"]])
    assert configs.load_sweep_config({"other": 1}, ["method=c"])["n"] == 5
    assert configs.get_search_path() == "search path"  # anything else goes to Hydra's loader


def test_a_pickled_loader_carries_no_kept_configs():
    configs = ValidatedConfigs(CountingLoader())
    configs.validate({}, [["method=a"]])
    copy = pickle.loads(pickle.dumps(configs))  # a launcher running jobs in other processes (submitit)
    assert copy.kept == {}
    assert copy.load_sweep_config({}, ["method=a"])["n"] == 2  # its own composition
    assert copy.loader.calls == [("method=a",), ("method=a",)]


# A `run -m` in a child process that counts Hydra's compositions of sweep points.
COUNTING = """
import sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from evalcam.cli import main
compose = ConfigLoaderImpl.load_sweep_config
calls = []
def counted(self, *args, **kwargs):
    calls.append(1)
    return compose(self, *args, **kwargs)
ConfigLoaderImpl.load_sweep_config = counted
try:
    main(sys.argv[1:])
finally:
    print(f"COMPOSED {len(calls)}")
"""


def sweep(tmp_path, *overrides: str) -> tuple[subprocess.CompletedProcess, int]:
    args = ["run", "-m", "method=gradcam,center", "dataset.limit=1", f"output_dir={tmp_path}", "mlflow=false",
            "progress=false", "n_examples=0", *overrides]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", COUNTING, *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    counts = [line for line in done.stdout.splitlines() if line.startswith("COMPOSED ")]
    return done, int(counts[-1].split()[1])


@pytest.mark.slow
def test_a_sweep_composes_each_point_once_and_runs_what_hydras_sweeper_runs(tmp_path):
    ours, composed = sweep(tmp_path / "ours")
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert composed == 2  # one per point (Hydra's basic sweeper: two)
    hydras, composed_by_hydra = sweep(tmp_path / "hydra", "hydra/sweeper=basic")
    assert hydras.returncode == 0, hydras.stderr[-2000:]
    assert composed_by_hydra == 4
    for method in ("gradcam", "center"):
        (mine,) = (tmp_path / "ours").glob(f"{method}__*/summary.json")
        (theirs,) = (tmp_path / "hydra").glob(f"{method}__*/summary.json")
        assert mine.parent.name == theirs.parent.name  # the same settings hash
        a, b = json.loads(mine.read_text()), json.loads(theirs.read_text())
        assert a["params"] == {**b["params"], "output_dir": str(tmp_path / "ours")}
        numbers = [k for k in a["metrics"] if not k.startswith("run/")]
        assert numbers and all(a["metrics"][k] == b["metrics"][k] for k in numbers)
    # Each job's Hydra folder records the job as Hydra's own sweeper does (number, overrides).
    for folder in ("ours", "hydra"):
        (job,) = (tmp_path / folder).glob("hydra/multirun_*/1/.hydra/overrides.yaml")
        assert "method=center" in job.read_text()


def test_a_point_that_does_not_compose_fails_before_any_job_runs(tmp_path):
    done, composed = sweep(tmp_path, "stats.nope=1,2")
    assert done.returncode != 0
    assert "Could not override 'stats.nope'" in done.stderr  # Hydra's own message
    assert composed == 1  # validation stopped at the first point
    assert not list(tmp_path.glob("*__*"))  # no run folder: no job started
