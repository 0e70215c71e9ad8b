"""``python -m evalcam <command>``: run (Hydra), experiment, report, figure, log, layers, ui."""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path

from evalcam.tracking import TrackingUnavailable

USAGE = """usage: python -m evalcam <command> [args]

commands:
  run [overrides]      evaluate a method (Hydra overrides; -m for sweeps), e.g. method=gradcam dataset=sample
  bench [--device D] [--methods m1,m2] [--quick] ...
                       images/s of every method vs pytorch-grad-cam, Captum, TorchCAM and the floors
  compare [RUN_DIR ...] [--experiment NAME] [--filter STRING] [--reference METHOD] [--rank]
                       methods x metrics with bootstrap intervals and Holm-corrected paired tests
  log RUN_DIR          log a finished run directory to MLflow (after the tracking server was unreachable)
  layers [model=NAME] [model.weights=PATH]
                       list a model's layers usable as model.target_layer
  ui [--port N] [--backend-store-uri URI]
                       start the MLflow UI on 127.0.0.1 for the store `run` logs to
  experiment NAME [--profile paper|lite|sample] [--experiments-dir DIR] [overrides]
                       run every configuration of a paper table (experiments/NAME.yaml)
  report NAME [--profile P] [--tracking-uri URI] [--out reports] [--run-id ID ...]
                       ours vs published vs delta from the MLflow runs -> reports/NAME.{md,html,csv}
  figure figure1|grid [--image ID] [--classes A,B] [--methods m1,m2] [--model M] [--dataset D]
                       [--limit N] [--out PATH] [--mlflow] [--tracking-uri URI]
                       Grad-CAM Figure-1 grid (two classes of one image) or a per-method heatmap grid
"""

LAYERS_HELP = """usage: python -m evalcam layers [model=NAME] [model.weights=PATH]

List the layers of a model (name and module type) usable as model.target_layer, then its default target
layer. model= is any name of conf/model (default efficientnet_lite0); torchvision architectures need no
weights file for this (their layer names do not depend on the weights).
"""

# Configuration and input mistakes: reported as one line that says what is valid, never a traceback.
# OSError covers a missing file and a full disk (evalcam.results.StorageError): earlier results are intact.
CONFIG_ERRORS = (ValueError, KeyError, OSError, ImportError, TrackingUnavailable)


def pgc_override(arg: str) -> list[str]:
    """``method=pgc/ScoreCAM`` -> ``method=pgc method.name=pgc/ScoreCAM``: any pytorch-grad-cam class
    without a config file per class (Hydra would look for conf/method/pgc/ScoreCAM.yaml); the same for
    ``method=captum/<ClassName>``."""
    key, _, value = arg.partition("=")
    prefix = value.split("/", 1)[0]
    if key.lstrip("+~") == "method" and prefix in ("pgc", "captum") and "/" in value and "," not in value:
        return [f"method={prefix}", f"method.name={value}"]
    return [arg]


def _run_hydra(argv: list[str]) -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="pkg://evalcam.conf", config_name="config")
    def _main(cfg: DictConfig) -> float | None:
        from evalcam.runner import run

        try:
            result = run(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        except CONFIG_ERRORS as err:
            # Hydra prints a traceback for any exception escaping the job; SystemExit passes through it.
            raise SystemExit(f"evalcam: error: {err}") from None
        if not result.metrics:  # torchrun ranks other than 0: rank 0 reports the merged run
            return None
        from evalcam.stats.bootstrap import format_interval

        shown = {k: v for k, v in result.metrics.items() if not k.endswith(("/ci_low", "/ci_high"))}
        width = max(len(k) for k in shown)
        print(f"\nrun folder: {result.run_dir}")
        for key, value in shown.items():
            low, high = result.metrics.get(f"{key}/ci_low"), result.metrics.get(f"{key}/ci_high")
            why = f"  (no value: {result.notes[key]})" if key in result.notes else ""
            print(f"  {key:<{width}}  {format_interval(value, low, high)}{why}")
        if result.mlflow_run_id:
            print(f"MLflow run {result.mlflow_run_id} (browse with: python -m evalcam ui)")
        _record_sweep_job(result.run_dir)
        return None

    from evalcam.overrides import check_overrides

    expanded = [part for arg in argv for part in pgc_override(arg)]
    check_overrides(expanded)  # a typo ends in one line naming the key, before Hydra's multi-line report
    sys.argv = [sys.argv[0], *expanded, *sweeper_fallback(expanded)]
    _main()


def sweeper_fallback(argv: list[str]) -> list[str]:
    """Make evalcam's sweeper (the default of conf/config.yaml, ``hydra_plugins/evalcam_sweeper``) known to
    Hydra for a ``-m`` sweep and return ``[]``; ``["hydra/sweeper=basic"]`` when it cannot be imported (e.g.
    an install made before it existed): Hydra's own sweeper gives the same jobs, composing each config twice.

    The class is registered by hand because Hydra's plugin scan walks the ``hydra_plugins`` namespace's
    folders, which an editable install (PEP 660 import hook) does not expose outside the repository root."""
    if not {"-m", "--multirun"} & set(argv) or any(a.startswith("hydra/sweeper=") for a in argv):
        return []
    try:
        from hydra.core.plugins import Plugins

        # The scan first: it re-imports Hydra's core plugins, and the sweeper must subclass the
        # BasicSweeper the scan leaves in place.
        plugins = Plugins.instance()
        from hydra_plugins.evalcam_sweeper import ComposeOnceSweeper

        plugins.register(ComposeOnceSweeper)
        return []
    except Exception as err:  # an old or partial install: the basic sweeper runs the same jobs
        logging.getLogger(__name__).info(
            "evalcam's sweeper plugin is unavailable (%s): Hydra's basic sweeper runs", err
        )
        return ["hydra/sweeper=basic"]


def _record_sweep_job(run_dir) -> None:
    """In a ``-m`` sweep, leave this job's run folder for the table printed when the sweep ends."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from evalcam.sweep_table import record_job

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        record_job(HydraConfig.get().runtime.output_dir, run_dir)


def _layers(argv: list[str]) -> None:
    from omegaconf import OmegaConf

    from evalcam.config import compose_run_config, load_configured_model
    from evalcam.models.torchvision_models import ARCHITECTURES
    from evalcam.overrides import check_overrides

    if any(a in {"-h", "--help"} for a in argv):
        print(LAYERS_HELP)
        return
    unknown = [a for a in argv if "=" not in a or a.split("=", 1)[0] not in {"model", "model.weights"}]
    if unknown:
        raise ValueError(
            f"layers takes model=NAME and model.weights=PATH, not {' '.join(unknown)}; see layers --help"
        )
    check_overrides(argv)  # an unknown model= lists the valid names in one line
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    name = options.get("model", "efficientnet_lite0")
    weights = options.get("model.weights")
    if weights is None and name in ARCHITECTURES:
        weights = "random"  # layer names need the architecture only, not the weights file
    # The model section a run composes (target layer, params of conf/model/NAME.yaml), weights aside.
    overrides = [f"model={name}"] + ([] if weights is None else [f"++model.weights={weights}"])
    bundle = load_configured_model(OmegaConf.to_container(compose_run_config(overrides).model, resolve=True))
    for layer, module in bundle.model.named_modules():
        if layer:
            print(f"{layer:<40} {type(module).__name__}")
    print(f"\ndefault target layer: {bundle.target_layer}")


def _experiment(argv: list[str]) -> None:
    import argparse

    from evalcam.experiments import run_experiment

    parser = argparse.ArgumentParser(
        prog="python -m evalcam experiment",
        description="Run every sweep point of one profile of experiments/<name>.yaml, one MLflow run each. "
        "Any other argument is a Hydra override appended to every run (e.g. device=cuda batch_size=64 "
        "dataset.limit=100).",
    )
    parser.add_argument("name", help="experiment file name: gradcam_table1, pointing_game, faithfulness, ...")
    parser.add_argument("--profile", default="paper", help="paper (default), lite or sample")
    parser.add_argument(
        "--experiments-dir", default=None, help="folder of experiment files (default: experiments/)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="keep only sweep points that contain this override, e.g. --only model=vgg16 (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs' overrides and exit")
    args, overrides = parser.parse_known_args(argv)
    from evalcam.overrides import check_overrides

    check_overrides(overrides)
    if args.dry_run:
        from evalcam.experiments import load_experiment, select_points, sweep_overrides

        spec = load_experiment(args.name, args.experiments_dir)
        for point in select_points(sweep_overrides(spec, args.profile, overrides), args.only):
            print(" ".join(point))
        return
    outcomes = run_experiment(args.name, args.profile, overrides, args.experiments_dir, args.only)
    failed = [o for o in outcomes if o.error]
    for outcome in outcomes:
        status = f"FAILED {outcome.error}" if outcome.error else f"MLflow run {outcome.run_id}"
        print(f"{' '.join(outcome.overrides)}\n    {status}")
    done = len(outcomes) - len(failed)
    finished = [o.run_dir for o in outcomes if o.run_dir]
    if finished:
        from evalcam.sweep_table import comparison_table, save_and_print, summaries_of

        # Saved beside the run folders (output_dir), one table per experiment profile.
        stem = f"{args.name}.{args.profile}.comparison"
        save_and_print(comparison_table(summaries_of(finished)), Path(finished[0]).parent, stem)
    print(f"{done} of {len(outcomes)} runs done; report: python -m evalcam report {args.name}")
    if failed:
        raise SystemExit(1)


def _report(argv: list[str]) -> None:
    from evalcam.report import main as report_main

    report_main(argv)


def _figure(argv: list[str]) -> None:
    from evalcam.figures import main as figure_main

    figure_main(argv)


def _ui(argv: list[str]) -> None:
    from evalcam.ui import serve

    raise SystemExit(serve(argv))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return
    if argv[0] in {"--version", "-V", "version"}:
        from evalcam import __version__

        print(f"evalcam {__version__}")
        return
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            _run_hydra(rest)
        elif command == "bench":
            from evalcam.bench import main as bench

            bench(rest)
        elif command == "compare":
            from evalcam.stats.compare import main as compare_main

            compare_main(rest)
        elif command == "log":
            from evalcam.tracking import log_run_dir

            for run_dir in rest:
                print(f"{run_dir}: MLflow run {log_run_dir(run_dir)}")
        elif command == "layers":
            _layers(rest)
        elif command == "ui":
            _ui(rest)
        elif command == "experiment":
            _experiment(rest)
        elif command == "report":
            _report(rest)
        elif command == "figure":
            _figure(rest)
        else:
            raise SystemExit(f"evalcam: unknown command {command!r}\n{USAGE}")
    except CONFIG_ERRORS as err:
        # Configuration mistakes end in one line that says what is valid, not a traceback.
        raise SystemExit(f"evalcam: error: {err}") from None
    except KeyboardInterrupt:
        # The runner has already said how many images are saved and how to resume.
        raise SystemExit(130) from None
    except Exception as err:
        from evalcam.tracking import store_refusal

        # MLflow refusing its store (file:// in MLflow 3) is a configuration mistake too: one line, the fix.
        refusal = store_refusal(err, os.environ.get("MLFLOW_TRACKING_URI"))
        if refusal is None:
            raise
        raise SystemExit(f"evalcam: error: {refusal}") from None


# Collector thresholds of the `evalcam` program: the first one 70x CPython's 700. Importing torch, MLflow,
# pandas and Hydra allocates millions of long-lived objects, and at the default thresholds the collector
# walks all of them again and again (~0.7 s CPU of a one-image run). Full collections still happen, only
# rarer; the batch loop's tensors are freed by reference counting, not by the collector.
PROGRAM_GC_THRESHOLDS = (50_000, 10, 10)


# glibc malloc settings of the `evalcam` program. By default glibc gives freed memory back to the OS at once:
# it unmaps every freed block above a threshold that adapts to the blocks freed so far, and it trims the top
# of the heap once more than twice that threshold is free there. A batch frees its whole autograd graph
# (hundreds of MB for EfficientNet-Lite0 at batch 16) when its last gradient is taken, so the next batch
# page-faults all of it in again: ~1e5 faults a batch, ~25 % of a CPU run's time. Blocks up to 32 MB (glibc's
# largest mmap threshold) now come from the heap, and up to 2 GB of free heap top is kept for the next batch;
# it is held until the process exits (peak RSS of a 400-image Lite0 run 2.34 GB, was 2.13 GB). No result
# changes (reports/benchmark.md, "End to end, third pass").
MALLOC_MMAP_THRESHOLD = 32 * 2**20
MALLOC_TRIM_THRESHOLD = 2**31 - 1
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Apply :data:`MALLOC_MMAP_THRESHOLD` and :data:`MALLOC_TRIM_THRESHOLD` (glibc's ``mallopt``) to this
    process; False where the C library has no such settings (not Linux, or not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # musl has mallopt too, as a stub that changes nothing and returns 0
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    )


def entry() -> None:
    """The ``evalcam`` program (console script and ``python -m evalcam``): :func:`main` with process-wide
    settings for a short-lived command, kept out of :func:`main` so in-process callers are unaffected."""
    gc.set_threshold(*PROGRAM_GC_THRESHOLDS)
    keep_freed_memory()
    try:
        main()
    finally:
        # At exit the interpreter collects garbage over every object the libraries created (~1 s CPU with
        # MLflow loaded) just to free memory the OS takes back anyway; frozen objects are skipped. Files and
        # MLflow's records are closed and flushed before this point, atexit handlers still run.
        gc.freeze()


if __name__ == "__main__":
    entry()
