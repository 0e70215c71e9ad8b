"""``python -m evalcam <command>``: run (Hydra), log, layers, ui."""

from __future__ import annotations

import logging
import sys

USAGE = """usage: python -m evalcam <command> [args]

commands:
  run [overrides]      evaluate a method (Hydra overrides; -m for sweeps), e.g. method=gradcam dataset=sample
  log RUN_DIR          log a finished run directory to MLflow (after the tracking server was unreachable)
  layers [model=NAME]  list a model's layers usable as model.target_layer
  ui [--port N] [--backend-store-uri URI]
                       start the MLflow UI on 127.0.0.1 for the store `run` logs to
"""


def _run_hydra(argv: list[str]) -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="pkg://evalcam.conf", config_name="config")
    def _main(cfg: DictConfig) -> float | None:
        from evalcam.runner import run

        result = run(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        width = max(len(k) for k in result.metrics)
        print(f"\nrun folder: {result.run_dir}")
        for key, value in result.metrics.items():
            print(f"  {key:<{width}}  {value:.4f}")
        if result.mlflow_run_id:
            print(f"MLflow run {result.mlflow_run_id} (browse with: python -m evalcam ui)")
        return None

    sys.argv = [sys.argv[0], *argv]
    _main()


def _layers(argv: list[str]) -> None:
    from evalcam.models import load_model

    name = next((a.split("=", 1)[1] for a in argv if a.startswith("model=")), "efficientnet_lite0")
    bundle = load_model(name)
    for layer, module in bundle.model.named_modules():
        if layer:
            print(f"{layer:<40} {type(module).__name__}")
    print(f"\ndefault target layer: {bundle.target_layer}")


def _ui(argv: list[str]) -> None:
    from evalcam.ui import serve

    raise SystemExit(serve(argv))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(USAGE)
        return
    command, rest = argv[0], argv[1:]
    try:
        if command == "run":
            _run_hydra(rest)
        elif command == "log":
            from evalcam.tracking import log_run_dir

            for run_dir in rest:
                print(f"{run_dir}: MLflow run {log_run_dir(run_dir)}")
        elif command == "layers":
            _layers(rest)
        elif command == "ui":
            _ui(rest)
        else:
            raise SystemExit(f"evalcam: unknown command {command!r}\n{USAGE}")
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError) as err:
        # Configuration mistakes end in one line that says what is valid, not a traceback.
        raise SystemExit(f"evalcam: error: {err}") from None


if __name__ == "__main__":
    main()
