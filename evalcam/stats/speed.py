"""Speed of the bootstrap (issue 15's benchmark line): intervals of ``metrics`` per-image means over
``images`` images with ``resamples`` resamples, the shape of a large run's ``run_intervals`` call."""

from __future__ import annotations

import time

import numpy as np

from evalcam.stats.aggregation import Mean
from evalcam.stats.bootstrap import percentile_interval, resampled_values


def bench_bootstrap(images: int = 50_000, metrics: int = 10, resamples: int = 1000, seed: int = 0) -> float:
    """Seconds to bootstrap ``metrics`` per-image means of ``images`` images (``resamples`` resamples,
    95% percentile intervals); the records are synthetic (Bernoulli hits and uniform scores)."""
    rng = np.random.default_rng(seed)
    columns = [
        rng.random(images) if k % 2 else (rng.random(images) < 0.4).astype(float) for k in range(metrics)
    ]
    aggregations = [Mean(f"m{k}") for k in range(metrics)]
    matrices = [np.stack([c, np.ones(images)], axis=1) for c in columns]
    started = time.perf_counter()
    sampled = resampled_values(matrices, aggregations, resamples, seed)
    for j in range(metrics):
        percentile_interval(sampled[:, j], 0.95)
    return time.perf_counter() - started


def bench_rows(images: int = 50_000, metrics: int = 10, resamples: int = 1000) -> list[dict[str, object]]:
    """One benchmark line: the bootstrap's seconds against the issue's 10 s target."""
    seconds = bench_bootstrap(images, metrics, resamples)
    return [
        {
            "name": f"bootstrap {images} images x {metrics} metrics x {resamples} resamples",
            "seconds": round(seconds, 3),
            "target_seconds": 10.0,
            "ratio_to_target": round(seconds / 10.0, 3),
        }
    ]
