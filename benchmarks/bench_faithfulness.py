"""Print evalcam's faithfulness family against its forward floor and Quantus (CPU seconds), Lite0, CPU."""

from __future__ import annotations

import argparse
import os

import torch

from evalcam.bench.faithfulness_metrics import bench_rows, bench_shared_rows, format_rows

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--steps", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are printed")
    parser.add_argument("--metrics", nargs="*", default=None)
    parser.add_argument(
        "--compile", action="store_true", help="evalcam's forwards through torch.compile (warmed first)"
    )
    parser.add_argument(
        "--methods",
        type=int,
        default=1,
        help="also score the maps of N methods with the metrics whose copies do not depend on the map "
        "(evalcam's score cache shares their forwards; Quantus runs once per method)",
    )
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    before = os.getloadavg()
    rows = bench_rows(args.images, args.steps, args.metrics, args.repeats, compiled=args.compile)
    table = format_rows(rows)
    if args.methods > 1:
        shared = bench_shared_rows(args.images, args.steps, args.methods, args.metrics, args.repeats)
        if shared:
            table += "\n\n" + format_rows(shared)
    after = os.getloadavg()
    print(table)
    print(
        f"\n{args.images} images, {args.steps} steps, {args.repeats} repeats (medians), "
        f"{torch.get_num_threads()} thread(s){', compiled' if args.compile else ''}; "
        f"load average {before[0]:.2f} before, {after[0]:.2f} after"
    )
