"""One seed for everything random in a run.

The top-level ``seed=`` (default 0, logged with the run's params) is the only source of randomness: each
consumer gets ``derive_seed(seed, purpose)``, a stable hash, so two consumers never share a stream and
changing one consumer's purpose string never shifts another's numbers. A sub-seed set explicitly in the
config (``method.params.seed=3``) is kept as given.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

# (path in the config, purpose): config entries that are filled from the top-level seed when null. Every
# selected metric's ``seed`` is too, with the metric's name as its purpose (PGD starts, re-initialization,
# noise draws, mosaics, ...).
SEEDED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("method", "params", "seed"), "method"),  # RISE masks, the random baseline, sampling methods
    (("stats", "seed"), "bootstrap"),
)


def derive_seed(seed: int, purpose: str) -> int:
    """A 31-bit seed for ``purpose`` derived from the run's ``seed`` (stable across Python versions)."""
    digest = hashlib.sha256(f"evalcam:{int(seed)}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def resolve_seeds(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` whose null sub-seeds are derived from ``config["seed"]``.

    ``dataset.subset_seed`` stays null (the first ``limit`` images, nothing random) unless it is ``auto``,
    which draws the subset from the run's seed.
    """
    out = copy.deepcopy(config)
    seed = out.setdefault("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got seed={seed!r}")
    metrics = out.get("metrics")
    paths = [*SEEDED, *((("metrics", name, "seed"), name) for name in (metrics or {}))]
    for path, purpose in paths:
        node = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict) and path[-1] in node and node[path[-1]] is None:
            node[path[-1]] = derive_seed(seed, purpose)
    dataset = out.get("dataset")
    if isinstance(dataset, dict) and dataset.get("subset_seed") == "auto":
        dataset["subset_seed"] = derive_seed(seed, "subset")
    return out
