"""Which images of a run are evaluated together, so that a resumed run matches an uninterrupted one.

Metrics that score each image on its own give the same numbers whatever the batches (tested), so their
runs batch whatever is left to do (``torchrun``: every ``world``-th remaining image per process). A
batch-dependent metric (:attr:`evalcam.metrics.base.Metric.batch_dependent`: Focus, sufficiency) scores
an image against the others of its batch, so there the batches are fixed by the dataset alone: image
``k * batch_size`` to ``(k + 1) * batch_size - 1`` of the dataset's order, whoever evaluates them and
whenever. A run of such metrics is saved batch by batch (never split, :mod:`evalcam.pacing`), resumes at
the first unfinished batch, and ``torchrun`` processes take whole batches. A run folder whose saved parts
are not such batches (another ``batch_size``, or a run saved before batches were kept whole) is refused
rather than resumed into numbers that no uninterrupted run gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def fixed_batches(count: int, batch_size: int) -> list[list[int]]:
    """The dataset indices of every batch of an uninterrupted run: consecutive runs of ``batch_size``."""
    size = max(1, int(batch_size))
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def check_saved_batches(
    saved: Sequence[tuple[str, Sequence[str]]],
    ids: Sequence[str],
    batch_size: int,
    dependent: Sequence[str],
    run_dir: Path,
) -> None:
    """Refuse a run folder whose saved parts (``(part name, image ids)``) are not whole fixed batches."""
    batches = {frozenset(ids[i] for i in batch) for batch in fixed_batches(len(ids), batch_size)}
    for name, part in saved:
        if frozenset(part) in batches:
            continue
        raise ValueError(
            f"{run_dir} holds part {name} of {len(part)} image(s) that is not one batch of "
            f"batch_size={batch_size}; {', '.join(dependent)} score(s) an image against the others of its "
            f"batch, so resuming would mix two batchings: rerun with the batch_size the run was started "
            f"with, or delete the folder to start over (runs saved before batches were kept whole split "
            f"their first batch: delete those)"
        )


def plan_batches(
    ids: Sequence[str],
    done: set[str],
    batch_size: int,
    rank: int = 0,
    world: int = 1,
    dependent: Sequence[str] = (),
) -> list[list[int]]:
    """Dataset indices of the batches this process evaluates, in order (see the module docstring)."""
    size = max(1, int(batch_size))
    if not dependent:
        todo = [i for i, image_id in enumerate(ids) if image_id not in done][rank::world]
        return [todo[start : start + size] for start in range(0, len(todo), size)]
    left = []
    for batch in fixed_batches(len(ids), size):
        finished = sum(ids[i] in done for i in batch)
        if finished == len(batch):
            continue
        if finished:  # check_saved_batches refuses such folders first; never evaluate half a batch
            raise ValueError(
                f"batch of images {ids[batch[0]]}..{ids[batch[-1]]} is partly done; "
                f"{', '.join(dependent)} need(s) whole batches: delete the run folder to start over"
            )
        left.append(batch)
    return left[rank::world]
