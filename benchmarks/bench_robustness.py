"""Robustness and randomization metrics (issue 18), evalcam vs Quantus: EfficientNet-Lite0, Grad-CAM,
batch 8, CPU. See :mod:`evalcam.bench.robustness_metrics` for the protocol. Example::

    python benchmarks/bench_robustness.py --batch-size 8 --samples 4
"""

from __future__ import annotations

import argparse

from evalcam.bench.robustness_metrics import bench_rows, format_rows

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="perturbed copies per image (both sides)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunk-size", type=int, default=None, help="evalcam images per explainer call")
    args = parser.parse_args()
    print(format_rows(bench_rows(args.batch_size, args.samples, args.device, args.chunk_size)))
