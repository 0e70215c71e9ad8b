"""Throughput benchmark: evalcam's methods against pytorch-grad-cam, Captum and TorchCAM, and floors.

``python -m evalcam bench [options]`` (or ``python benchmarks/bench_methods.py``). Every entry explains the
same batch, on the same model, target layer, device and batch size, for the same fixed target classes
(the model's top-1 predictions, computed once outside the timing), so the libraries do the same job:
one map per image. Timing protocol: ``--warmup`` untimed calls, then ``--repeats`` timed calls, each
bracketed by a device synchronisation; the table reports the median. Ratios are taken inside the same
process, against

- ``floor:forward``: a bare ``torch.no_grad()`` forward pass, the cost of classifying the batch;
- ``floor:forward+grad@layer``: a forward pass plus the gradient of the target scores down to the target
  layer's activation (a forward hook, ``torch.autograd.grad``), the least any gradient CAM must do;
- ``floor:forward+backward``: a forward pass plus the full backward pass to the input.

The floors run in the layout the model is fastest in (channels-last for a CNN on the CPU, as evalcam's CAM
explainers and perturbation metrics run; the conversion is inside the timing): the least plain PyTorch can
do, not a slower one. Peers get the same NCHW batch a user would pass them.

What each library returns differs and is part of its cost: evalcam keeps maps at feature resolution on
the device; pytorch-grad-cam returns min-max normalised maps resized to the input on the host (NumPy +
OpenCV); Captum and TorchCAM return feature-resolution tensors.

``--synthetic N`` additionally times N synthetic images end to end through the runner's batch step
(preprocessing from uint8, top-5 explanation, the weak-localization metric of the Grad-CAM paper, Table 1)
and extrapolates to the 50,000 images of ILSVRC2012 val. ``--random-weights`` builds the torchvision
architecture with random initialisation (throughput does not depend on weight values), for models such
as VGG16 whose weights are not available offline.
"""

from evalcam.bench.cli import build_bundle, main, parse_args
from evalcam.bench.entries import Entry, Timing, floor_entries, ours_entry
from evalcam.bench.peers import available_libraries, peer_entries
from evalcam.bench.report import format_faithfulness, format_table
from evalcam.bench.synthetic import run_synthetic, synthetic_images, time_faithfulness
from evalcam.bench.timing import time_entries

__all__ = [
    "Entry",
    "Timing",
    "available_libraries",
    "build_bundle",
    "floor_entries",
    "format_faithfulness",
    "format_table",
    "main",
    "ours_entry",
    "parse_args",
    "peer_entries",
    "run_synthetic",
    "synthetic_images",
    "time_entries",
    "time_faithfulness",
]
