"""Statistics over per-image records: bootstrap intervals, paired tests, cross-metric ranking, one seed.

Not to be confused with :mod:`evalcam.metrics.stats` (rank correlation of maps inside metrics).
"""

from evalcam.stats.aggregation import Aggregation, BestThreshold, ClassMean, Mean, PairMean
from evalcam.stats.bootstrap import Interval, bootstrap, resample_counts, run_intervals
from evalcam.stats.seed import derive_seed, resolve_seeds

__all__ = [
    "Aggregation",
    "BestThreshold",
    "ClassMean",
    "Interval",
    "Mean",
    "PairMean",
    "bootstrap",
    "derive_seed",
    "resample_counts",
    "resolve_seeds",
    "run_intervals",
]
