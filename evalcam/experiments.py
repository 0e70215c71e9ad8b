"""Paper-table experiments: ``experiments/<name>.yaml`` -> one runner call per sweep point.

An experiment file names the MLflow experiment its runs go to, the report's columns, one or more
*profiles* (``paper``: the paper's networks; ``lite``/``sample``: what runs without downloads) and the
published values with their source. A profile holds Hydra ``overrides`` shared by all its runs and a
``sweep``: axes whose values are either a config-group choice (``gradcam`` -> ``method=gradcam``) or a
list of overrides (``[method=scorecam, dataset.limit=4]``); the runs are the axes' cartesian product.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


def experiments_dir(explicit: str | Path | None = None) -> Path:
    """``explicit``, else ``$EVALCAM_EXPERIMENTS``, else ``./experiments``, else the source checkout's."""
    candidates = [explicit, os.environ.get("EVALCAM_EXPERIMENTS"), Path.cwd() / "experiments"]
    # An editable install (pip install -e .) keeps the repository next to the package.
    candidates.append(Path(__file__).resolve().parents[1] / "experiments")
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise FileNotFoundError(
        "no experiments/ folder found: pass --experiments-dir DIR or set EVALCAM_EXPERIMENTS"
    )


def available(directory: Path) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load_experiment(name: str, directory: str | Path | None = None) -> dict[str, Any]:
    """Parse ``<directory>/<name>.yaml`` (``name`` may also be a path to a YAML file)."""
    path = Path(name)
    if path.suffix not in {".yaml", ".yml"} or not path.is_file():
        folder = experiments_dir(directory)
        path = folder / f"{name}.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"unknown experiment {name!r}; available: {', '.join(available(folder))}")
    spec = yaml.safe_load(path.read_text())
    for key in ("name", "mlflow_experiment", "columns", "profiles", "published"):
        if key not in spec:
            raise ValueError(f"{path}: missing key {key!r}")
    spec["path"] = str(path)
    return spec


def profile(spec: dict[str, Any], name: str) -> dict[str, Any]:
    profiles = spec["profiles"]
    if name not in profiles:
        raise ValueError(
            f"experiment {spec['name']} has no profile {name!r}; available: {', '.join(profiles)}"
        )
    return profiles[name]


def _axis_overrides(axis: str, value: str | Sequence[str]) -> list[str]:
    return [f"{axis}={value}"] if isinstance(value, str) else [str(v) for v in value]


def sweep_overrides(spec: dict[str, Any], profile_name: str, extra: Sequence[str] = ()) -> list[list[str]]:
    """Hydra override lists, one per run of the profile (shared overrides, then axes, then ``extra``)."""
    prof = profile(spec, profile_name)
    axes = [[_axis_overrides(axis, v) for v in values] for axis, values in prof.get("sweep", {}).items()]
    shared = [*map(str, prof.get("overrides", [])), f"experiment={spec['mlflow_experiment']}"]
    points = [list(itertools.chain.from_iterable(point)) for point in itertools.product(*axes)]
    # ``exclude``: combinations that cannot run (e.g. CAM on a network without a GAP+FC head).
    excluded = [[str(o) for o in entry] for entry in prof.get("exclude", [])]
    points = [p for p in points if not any(all(o in p for o in entry) for entry in excluded)]
    return [[*shared, *point, *extra] for point in points]


def compose_many(override_lists: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    """The runner's configs for several override lists (the composition of ``python -m evalcam run``);
    Hydra is initialised once, which is most of the cost."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="evalcam.conf", version_base="1.3"):
        configs = [hydra_compose(config_name="config", overrides=list(o)) for o in override_lists]
    return [OmegaConf.to_container(c, resolve=True) for c in configs]  # type: ignore[misc]


def compose(overrides: Sequence[str]) -> dict[str, Any]:
    return compose_many([overrides])[0]


@dataclass
class RunOutcome:
    overrides: list[str]
    run_id: str | None = None
    error: str | None = None
    run_dir: str | None = None


def select_points(points: Sequence[list[str]], only: Sequence[str] = ()) -> list[list[str]]:
    """The sweep points whose overrides contain every override of ``only`` (all points if it is empty)."""
    wanted = [o.strip() for o in only if o.strip()]
    return [p for p in points if all(w in p for w in wanted)]


def run_experiment(
    name: str,
    profile_name: str = "paper",
    extra: Sequence[str] = (),
    directory: str | Path | None = None,
    only: Sequence[str] = (),
) -> list[RunOutcome]:
    """Run every sweep point (those containing all of ``only``) in this process; a failing point (e.g.
    missing weights) is reported, and the others still run."""
    from evalcam.runner import run

    spec = load_experiment(name, directory)
    points = sweep_overrides(spec, profile_name, extra)
    selected = select_points(points, only)
    if only and not selected:
        raise ValueError(
            f"--only {' '.join(only)} matches none of the {len(points)} sweep points of "
            f"{name}/{profile_name}; see them with --dry-run"
        )
    outcomes = []
    for overrides in selected:
        log.info("experiment %s/%s: %s", spec["name"], profile_name, " ".join(overrides))
        config = compose(overrides)
        try:
            result = run(config)
        except Exception as err:  # one missing weight file must not end a long sweep
            log.error("run failed (%s): %s", " ".join(overrides), err)
            outcomes.append(RunOutcome(list(overrides), error=f"{type(err).__name__}: {err}"))
            continue
        error = None
        if config.get("mlflow", True) and not result.mlflow_run_id:
            # The report reads MLflow only: a run that is not there is missing from the table.
            error = f"not logged to MLflow; results in {result.run_dir} (python -m evalcam log RUN_DIR)"
        outcomes.append(
            RunOutcome(list(overrides), run_id=result.mlflow_run_id, error=error, run_dir=str(result.run_dir))
        )
    return outcomes
