"""Making slow runs bearable: a cost estimate up front, images saved one at a time, and the maps the run
computed kept for ``examples.png``.

**Pace.** The first image of a run is evaluated on its own and timed, next to one plain forward pass of
the model on it. Their ratio is the run's cost in forward passes per image (Score-CAM: one per channel,
RISE: one per mask, occlusion: one per window, deletion/insertion: one per step, ...). When it is at least
``slow_ratio`` (default 50, config key ``slow_ratio``; Grad-CAM with top-5 maps costs about a dozen), the
run says so before going on: forwards per image x images, the measured seconds per image and the time
that makes; and from then on every image is evaluated and saved as its own
part of the run (:class:`evalcam.results.ResultStore`), so Ctrl-C (or a killed job) loses at most the
image in flight, and the progress bar moves, with its ETA, image by image. Cheap runs keep whole batches.
The measurement is one extra forward pass; the timed image is a real result and is kept.

**Batch-dependent metrics.** Splitting a batch changes no number only for metrics that score each image
on its own (tested for them). Focus builds its mosaics from the other images of the batch and sufficiency
compares an image with the others of its batch (:attr:`evalcam.metrics.base.Metric.batch_dependent`):
evaluated alone, the first image would get no mosaic and no neighbour. When any configured metric is
batch-dependent, batches are never split: the whole first batch is timed (seconds per image = its time
over its images), a slow run is still announced, and runs are saved batch by batch (Ctrl-C loses at
most the batch in flight). One log line says so when the run starts.

**Example maps.** The top-1 maps of the first ``n_examples`` images, at the resolution the method returned
them (feature resolution for CAMs: a few KB), are stored in the run folder (``example_maps.pt``) as the run
computes them, so ``examples.png`` is drawn from them, also after a resume, without explaining anything
again (Score-CAM used to spend minutes re-explaining the figure's images). The decoded images of those
examples are kept in memory too (not on disk: ~1 MB each), so the figure of a run that evaluated them
decodes nothing again (8 decodes, ~0.1 s a run); after a resume it reads them from the dataset.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from evalcam.data import Sample
from evalcam.metrics.base import EvalBatch
from evalcam.results import write_atomic

log = logging.getLogger(__name__)

EXAMPLE_MAPS = "example_maps.pt"


def duration(seconds: float) -> str:
    """``3h05m``, ``4m10s`` or ``12s``."""
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    if seconds >= 60:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds:.1f}s"


class Pace:
    """Splits each batch into the parts that are evaluated and saved together (see the module docstring)."""

    def __init__(
        self,
        bundle: Any,
        device: torch.device,
        batch_size: int,
        images: int,
        name: str,
        slow_ratio: float = 50.0,
        whole_batches: Sequence[str] = (),
    ) -> None:
        if slow_ratio <= 0:
            raise ValueError(f"slow_ratio must be > 0 (forward passes per image), got {slow_ratio}")
        self.bundle, self.device, self.name = bundle, device, name
        self.size = max(1, int(batch_size))
        self.images, self.slow_ratio = int(images), float(slow_ratio)
        self.calibrated = False
        self.slow = False
        self.forwards_per_image: float | None = None
        self.seconds_per_image: float | None = None
        #: names of the configured batch-dependent metrics: batches are then never split
        self.whole_batches = tuple(whole_batches)
        if self.whole_batches:
            log.info(
                "%s: %s compare(s) the images of a batch: batches of %d are evaluated and saved whole, "
                "never split (no image-by-image saving)",
                name,
                ", ".join(self.whole_batches),
                self.size,
            )

    def parts(self, samples: Sequence[Sample]) -> Iterator[list[Sample]]:
        """The batch's samples in parts; the caller evaluates and saves each part before asking for more."""
        start = 0
        while start < len(samples):
            # Batch-dependent metrics: the batch as the loader made it, its images scored together.
            size = len(samples) if self.whole_batches else self.size if self.calibrated else 1
            part = list(samples[start : start + size])
            began = time.perf_counter()
            yield part
            if not self.calibrated:
                self._calibrate(part[0], (time.perf_counter() - began) / len(part))
            start += len(part)

    def forward_seconds(self, sample: Sample) -> float:
        """Seconds of one plain forward pass of the model on ``sample`` (the second of two: no warm-up)."""
        inputs = self.bundle.preprocess([sample.image], self.device)
        seconds = math.inf
        with torch.no_grad():
            for _ in range(2):
                began = time.perf_counter()
                self.bundle.model(inputs)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds = time.perf_counter() - began
        return max(seconds, 1e-6)

    def _calibrate(self, sample: Sample, seconds: float) -> None:
        self.calibrated = True
        self.seconds_per_image = seconds
        self.forwards_per_image = seconds / self.forward_seconds(sample)
        if self.forwards_per_image < self.slow_ratio:
            return
        self.slow = True
        if self.whole_batches:
            units, unit, measured = "Batches", "batch", "over the first batch"
        else:
            self.size, units, unit, measured = 1, "Images", "image", "on the first"
        log.info(
            "%s: slow set-up, about %.0f forward passes per image x %d image(s); %.1f s/image measured "
            "%s, about %s in all. %s are saved one at a time: Ctrl-C keeps every finished %s, "
            "rerun the same command to resume.",
            self.name,
            self.forwards_per_image,
            self.images,
            seconds,
            measured,
            duration(seconds * self.images),
            units,
            unit,
        )


class ExampleMaps:
    """The top-1 maps of the first ``count`` evaluated images, kept in ``run_dir/example_maps.pt``."""

    def __init__(self, run_dir: Path, count: int, enabled: bool = True) -> None:
        self.path = Path(run_dir) / EXAMPLE_MAPS
        self.count = max(0, int(count))
        self.enabled = enabled and self.count > 0
        self.entries: list[dict[str, Any]] = load_example_maps(self.path) if self.enabled else []
        #: the samples (decoded image + annotations) of the entries added by this process, by image id
        self.samples: dict[str, Sample] = {}

    @property
    def full(self) -> bool:
        return len(self.entries) >= self.count

    def add(self, batch: EvalBatch) -> None:
        """Keep the maps of ``batch``'s images while fewer than ``count`` are kept; saved at once."""
        if not self.enabled or self.full:
            return
        kept = {entry["image_id"] for entry in self.entries}
        for i, sample in enumerate(batch.samples):
            if len(self.entries) >= self.count:
                break
            if sample.image_id in kept:
                continue
            self.entries.append(
                {
                    "image_id": sample.image_id,
                    "class": int(batch.pred_classes[i, 0]),
                    "map": batch.pred_maps[i, 0].detach().float().cpu().clone(),
                }
            )
            self.samples[sample.image_id] = sample
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, lambda tmp: torch.save(self.entries, tmp))


def load_example_maps(path: Path) -> list[dict[str, Any]]:
    """The stored example maps, [] when the run has none (yet)."""
    if not Path(path).is_file():
        return []
    return list(torch.load(path, map_location="cpu", weights_only=True))
