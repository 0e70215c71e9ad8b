"""Throughput of evalcam's methods vs pytorch-grad-cam, Captum, TorchCAM and forward/backward floors.

Same as ``python -m evalcam bench``; see :mod:`evalcam.bench` for the protocol. Examples::

    python benchmarks/bench_methods.py --device cpu --quick
    python benchmarks/bench_methods.py --device cuda --batch-size 64 --model vgg16 --random-weights \\
        --synthetic 2048 --json reports/bench_h100_vgg16.json
"""

from __future__ import annotations

import sys

from evalcam.bench import main

if __name__ == "__main__":
    main(sys.argv[1:])
