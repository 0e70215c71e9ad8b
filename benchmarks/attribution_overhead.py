"""Issue-16 methods vs their peers (Captum, zennit, TorchCAM, pytorch-grad-cam) on EfficientNet-Lite0.

python benchmarks/attribution_overhead.py [--images 4] [--size 224] [--repeats 3] [--methods a,b]
"""

from __future__ import annotations

import argparse

import torch

from evalcam.bench.attribution import bench_rows, format_rows
from evalcam.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    bundle = load_model("efficientnet_lite0", device=args.device)
    from evalcam.data.base import uint8_rgb
    from evalcam.data.sample import load_source

    # Real photos: SLIC (LIME, KernelSHAP) finds one superpixel in noise.
    sources = ["skimage:chelsea", "skimage:coffee", "matplotlib:grace_hopper.jpg", "sklearn:china.jpg"]
    photos = [uint8_rgb(load_source(sources[i % len(sources)])) for i in range(args.images)]
    images = torch.nn.functional.interpolate(
        bundle.preprocess(photos, args.device), size=(args.size, args.size), mode="bilinear", antialias=True
    )
    methods = [m for m in args.methods.split(",") if m] or None
    print(format_rows(bench_rows(bundle, images, methods, args.repeats)))


if __name__ == "__main__":
    main()
