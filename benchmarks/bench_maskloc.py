"""evalcam vs Quantus 0.6 on the no-forward metrics of issue 18 (complexity, mask localisation, Focus
scoring): per-metric time ratios on identical maps; see :mod:`evalcam.bench.mask_metrics` for the protocol.

    python benchmarks/bench_maskloc.py [--batch 8] [--size 224] [--repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse

from evalcam.bench.mask_metrics import bench_rows, format_rows

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="evalcam's device (Quantus runs on NumPy)")
    args = parser.parse_args()
    rows = bench_rows(args.batch, args.size, args.repeats, device=args.device)
    print("\n".join(format_rows(rows)))
