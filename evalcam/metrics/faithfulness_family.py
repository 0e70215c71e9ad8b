"""Registry entries of the faithfulness family (issue 18), kept here so the shared registry changes by
one line."""

from __future__ import annotations

from evalcam.metrics.base import Metric
from evalcam.metrics.faithfulness_correlation import FaithfulnessCorrelation
from evalcam.metrics.faithfulness_estimate import FaithfulnessEstimate
from evalcam.metrics.infidelity import Infidelity
from evalcam.metrics.irof import IROF
from evalcam.metrics.monotonicity_correlation import MonotonicityCorrelation
from evalcam.metrics.pixel_flipping import PixelFlipping
from evalcam.metrics.region_perturbation import RegionPerturbation
from evalcam.metrics.road import ROAD
from evalcam.metrics.sufficiency import Sufficiency

FAITHFULNESS_FAMILY: dict[str, type[Metric]] = {
    "road": ROAD,
    "irof": IROF,
    "pixel_flipping": PixelFlipping,
    "region_perturbation": RegionPerturbation,
    "faithfulness_correlation": FaithfulnessCorrelation,
    "faithfulness_estimate": FaithfulnessEstimate,
    "monotonicity_correlation": MonotonicityCorrelation,
    "sufficiency": Sufficiency,
    "infidelity": Infidelity,
}
