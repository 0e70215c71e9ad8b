"""``python -m evalcam bench``: argument parsing and the run that prints the tables."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from evalcam.bench.entries import autocast_entry, floor_entries, ours_entry
from evalcam.bench.peers import available_libraries, peer_entries
from evalcam.bench.report import format_faithfulness, format_table
from evalcam.bench.synthetic import run_synthetic, synthetic_images, time_faithfulness
from evalcam.bench.timing import time_entries
from evalcam.devices import device_name, resolve_device
from evalcam.models.bundle import ModelBundle


def build_bundle(name: str, device: torch.device, random_weights: bool, layer: str | None) -> ModelBundle:
    """The model under test from the model registry; ``random_weights`` builds a torchvision architecture
    with random initialisation (throughput does not depend on weight values)."""
    from evalcam.models import load_model
    from evalcam.models.torchvision_models import ARCHITECTURES

    if not random_weights:
        return load_model(name, device=device, target_layer=layer)
    if name not in ARCHITECTURES:
        raise ValueError(
            f"--random-weights needs a torchvision architecture, got {name!r}; available: "
            f"{', '.join(ARCHITECTURES)}"
        )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "weights=random": the header says so
        return load_model(name, device=device, target_layer=layer, weights="random")


def quantus_tables(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """evalcam vs Quantus per metric on identical maps, with the forwards each side needs; printed."""
    from evalcam.bench import mask_metrics

    rows = []
    print("\n# metrics vs Quantus (ratio = Quantus time / evalcam time, same maps, same protocol)")
    try:
        rows = mask_metrics.bench_rows(batch=args.batch_size, repeats=args.repeats, device=str(device))
    except ImportError as err:
        print(f"- not measured: {err} (pip install quantus)")
        return rows
    print("\n".join(mask_metrics.format_rows(rows)))
    from evalcam.bench import robustness_metrics

    robust = robustness_metrics.bench_rows(args.batch_size, samples=4, device=str(device))
    print("\n" + robustness_metrics.format_rows(robust))
    from evalcam.bench import faithfulness_metrics

    # Quantus accepts 3 m steps with m dividing 224 * 224; 12 keeps the table to minutes on a CPU.
    faithful = faithfulness_metrics.bench_rows(images=args.batch_size, steps=12 if args.quick else 48)
    print("\n" + faithfulness_metrics.format_rows(faithful))
    # A sweep's methods share the copies of the map-independent metrics (score cache); 24 steps: a square
    # grid Quantus's infidelity can take without padding.
    shared = faithfulness_metrics.bench_shared_rows(images=args.batch_size, steps=24, methods=3)
    print("\n" + faithfulness_metrics.format_rows(shared))
    return rows + robust + faithful + shared


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evalcam bench",
        description="images/s of evalcam's methods vs pytorch-grad-cam, Captum, TorchCAM and "
        "forward/backward floors (same model, batch, device, targets).",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--model", default="efficientnet_lite0", help="evalcam model name or torchvision arch"
    )
    parser.add_argument("--random-weights", action="store_true", help="torchvision architecture, random init")
    parser.add_argument("--layer", default=None, help="target layer (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32, 4 with --quick")
    parser.add_argument("--methods", default=None, help="comma-separated evalcam methods (default: all)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed calls per entry (default 10, 3 quick)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3, 1 quick)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per entry before repeats are cut")
    parser.add_argument("--no-peers", action="store_true", help="only evalcam and the floors")
    parser.add_argument("--autocast", default=None, help="bf16 | fp16: evalcam methods and floors only")
    parser.add_argument("--synthetic", type=int, default=0, metavar="N", help="also time N images end to end")
    parser.add_argument("--synthetic-size", type=int, default=224, help="side of the synthetic images")
    parser.add_argument("--synthetic-method", default="gradcam", help="method for --synthetic")
    parser.add_argument(
        "--faith-images", type=int, default=None, help="images for the occlusion timing (default 4, 1 quick)"
    )
    parser.add_argument(
        "--startup", action="store_true", help="also time --help, a one-image run and its MLflow logging"
    )
    parser.add_argument(
        "--end-to-end", type=int, default=0, metavar="N", help="also time a whole N-image run vs its floor"
    )
    parser.add_argument(
        "--sweep",
        type=int,
        default=0,
        metavar="N",
        help="also time a `run -m` sweep of N methods (at most 10) against the sum of its batch loops",
    )
    parser.add_argument(
        "--sweep-images", type=int, default=11, metavar="N", help="images per --sweep point (default 11)"
    )
    parser.add_argument(
        "--run-override",
        action="append",
        default=[],
        metavar="OVERRIDE",
        help="Hydra override for the --startup/--end-to-end/--sweep runs, e.g. dataset=imagenet_val "
        "(repeatable)",
    )
    parser.add_argument(
        "--quantus",
        action="store_true",
        help="also time the metrics Quantus has too, on identical maps (needs quantus, the peers extra)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="small batch, few repeats, cheap methods only")
    parser.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    args = parser.parse_args(list(argv) if argv is not None else None)
    from evalcam.bench.startup import SWEEP_METHODS

    if not 0 <= args.sweep <= len(SWEEP_METHODS) or args.sweep_images < 1:
        parser.error(f"--sweep takes 0 to {len(SWEEP_METHODS)} points and --sweep-images at least 1 image")
    quick = args.quick
    args.batch_size = args.batch_size or (4 if quick else 32)
    args.repeats = args.repeats or (3 if quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.budget = args.budget or (10.0 if quick else 60.0)
    args.faith_images = args.faith_images if args.faith_images is not None else (1 if quick else 4)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table; return (and with --json write) the results."""
    args = parse_args(argv)
    # Captum warns on every call that it set requires_grad and hooked ReLUs; the table is the output.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\..*")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
    bundle = build_bundle(args.model, device, args.random_weights, args.layer)
    layer = str(bundle.target_layer)

    from evalcam.methods import METHODS, CAMExplainer

    if args.methods:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = [m for m in names if m not in METHODS]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; available: {', '.join(sorted(METHODS))}")
    else:
        names = [m for m, record in METHODS.items() if not (args.quick and record.expensive)]
    # Methods that cannot run on this architecture (attention methods on a CNN) are not timed.
    names = [m for m in names if METHODS[m].cls.applies_to(bundle.model)]
    skipped_expensive = [
        m for m, record in METHODS.items() if args.quick and not args.methods and record.expensive
    ]

    images = synthetic_images(args.batch_size, 224, seed=0)
    x = bundle.preprocess(images, device)
    with torch.no_grad():
        classes = bundle.model(x).argmax(1)

    libraries = available_libraries() if not args.no_peers else {}
    params: dict[str, Any] = {"autocast": args.autocast} if args.autocast else {}
    entries = floor_entries(bundle.model, layer)
    for name in names:
        cls = METHODS[name].cls
        method_params = params if issubclass(cls, CAMExplainer) else {}
        entries.append(ours_entry(name, bundle, method_params))
        if not args.no_peers:
            entries.extend(peer_entries(name, bundle, libraries))

    header = {
        "device": device_name(device),
        "torch": torch.__version__,
        "model": bundle.name + (" (random init)" if args.random_weights else ""),
        "target_layer": layer,
        "batch_size": args.batch_size,
        "input": f"{tuple(x.shape[1:])}",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "autocast": args.autocast or "none (fp32)",
        "command": "python -m evalcam bench " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print("# evalcam throughput benchmark")
    for key, value in header.items():
        print(f"- {key}: {value}")
    for lib, why in libraries.items():
        if why:
            print(f"- note: peer {lib} skipped: {why}")
    if skipped_expensive:
        print(
            f"- note: --quick leaves out {', '.join(skipped_expensive)} (name them in --methods to time them)"
        )

    if args.autocast:
        from evalcam.methods.base import parse_autocast

        dtype = parse_autocast(args.autocast)
        if dtype is not None:
            # The floors run under the same autocast as evalcam's methods (peers stay in fp32).
            entries = [autocast_entry(e, device, dtype) if e.library == "torch" else e for e in entries]
    timings = time_entries(
        entries,
        x,
        classes,
        device,
        args.warmup,
        args.repeats,
        args.budget,
        progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
    )
    print()
    print(format_table(timings))

    result: dict[str, Any] = {"header": header, "timings": [asdict(t) for t in timings]}
    from evalcam.bench import attribution

    adapted = [m for m in names if m in attribution.QUICK_PARAMS]
    if adapted and not args.no_peers:
        # The Captum/zennit-backed methods against the library called directly: the adapter's overhead.
        rows = attribution.bench_rows(bundle, x, adapted, repeats=args.repeats)
        result["attribution"] = rows
        print("\n# adapter overhead (ours / the library called directly, same arguments)")
        print(attribution.format_rows(rows))
    print()
    if args.faith_images > 0:
        n = min(args.faith_images, x.shape[0])
        faith = time_faithfulness(
            bundle,
            x[:n],
            images[:n],
            classes[:n],
            device,
            args.repeats,
            args.budget,
            with_captum=not (args.no_peers or args.quick) and libraries.get("captum") is None,
        )
        result["faithfulness"] = faith
        print(format_faithfulness(faith))
    else:
        print("faithfulness metric: not measured (--faith-images 0)")

    if args.synthetic:
        syn = run_synthetic(
            bundle,
            args.synthetic_method,
            params,
            args.synthetic,
            args.batch_size,
            args.synthetic_size,
            device,
        )
        result["synthetic"] = syn
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in syn["stage_seconds"].items())
        print(
            f"\nend to end ({syn['method']}, preprocess + top-{syn['topk']} maps + weak_loc), "
            f"{syn['images']} synthetic {syn['image_size']}px images, batch {syn['batch_size']}: "
            f"{syn['images_per_s']:.1f} images/s ({syn['seconds']:.1f} s); stages: {stages}; "
            f"extrapolated ILSVRC2012 val (50k): {syn['ilsvrc_val_minutes']:.1f} min"
        )
    from evalcam.stats.speed import bench_rows as bootstrap_rows

    result["bootstrap"] = bootstrap_rows()
    for row in result["bootstrap"]:
        print(f"\n{row['name']}: {row['seconds']:.2f} s (target {row['target_seconds']} s)")
    if args.quantus:
        result["quantus"] = quantus_tables(args, device)
    if args.startup or args.end_to_end or args.sweep:
        import tempfile

        from evalcam.bench import startup

        with tempfile.TemporaryDirectory(prefix="evalcam-bench-") as tmp:
            if args.startup:
                costs = startup.fixed_costs(Path(tmp) / "startup", args.run_override)
                result["startup"] = costs
                print("\n" + startup.format_fixed_costs(costs))
            if args.end_to_end:
                e2e = startup.end_to_end(Path(tmp) / "e2e", args.end_to_end, args.run_override)
                result["end_to_end"] = e2e
                print("\n" + startup.format_end_to_end(e2e))
            if args.sweep:
                points = startup.sweep(Path(tmp) / "sweep", args.sweep, args.sweep_images, args.run_override)
                result["sweep"] = points
                print("\n" + startup.format_sweep(points))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
