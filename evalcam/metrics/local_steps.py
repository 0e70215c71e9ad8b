"""Perturbation steps that change a small region, scored by incremental re-inference.

The cumulative games (pixel flipping, region perturbation, IROF, RISE deletion/insertion) score copies of an
image in which a growing set of pixels was replaced. While that set is small and compact (the first
patches of region perturbation, the first runs of pixels of a smooth map), a copy differs from its base
image only inside the bounding box of the replaced pixels, and :mod:`evalcam.models.incremental`
(Nakandala et al., SIGMOD 2019) re-computes only that box's receptive-field cone from a cached clean pass
of the base image. The result is the same network function on the same input (equal to a plain forward up
to float round-off of different kernel tilings; tested).

What it pays off for was measured on EfficientNet-Lite0 (CPU, one thread, copies of one image sharing a
box): a copy costs about 0.5x a batched forward for boxes up to ~5 % of the image, 0.7x at 8-13 %, 0.8x at
18 % and nothing from ~30 % on (the cone of a box covers the late 7x7/14x14 maps, which then run densely).
Copies whose box covers at most ``local_fraction`` (default 0.15) of the image are candidates; an image
takes the incremental path only when its candidates save more than its clean pass costs (cost model
:func:`copy_cost`, clean pass = one forward; the clean passes run batched, a few images at a time, and are
cut per image). Its candidates then run grouped into one call while their union box stays under the bound;
copies identical to the base image (nothing replaced yet) take the clean pass's score; all other copies run
as full forwards, the steps of all images of a batch in one stream of ``chunk_size`` forwards.

Cumulative games with a fixed baseline are *nested* (copy ``k`` adds pixels to copy ``k - 1``) and run as
chains: each copy steps from the one before, re-computing only the cone of the pixels it adds. Images whose
steps are small, empty and full at the same ``k`` (region perturbation's patches: every step of every
image) step together, one call per step with one cached row and one box per image (up to ``CHAIN_ROWS``):
on Lite0 a step of 4 images then costs ~0.8 of their batched forward instead of ~1.0 one image at a time
(the late 14x14 and 7x7 maps run densely either way, and they are half of the network's time).

Where it pays: region perturbation (every patch is a small step: on the benchmark's random 7x7 maps,
``benchmarks/bench_faithfulness.py``, Lite0, 4 images, 24 patches of 16 px, all 96 copies chained, ~0.7 of
their full forwards) and the first steps of MoRF games on compact maps (CAMs are smooth blobs); pixel
flipping with 24 runs of ~2000 pixels gets no step under the bound (the bounding box of the top pixels of a
bilinear map is wide). LeRF orders and
insertion's late steps change scattered pixels: dense. ``incremental: auto`` uses this on the CPU only
(:func:`evalcam.methods.occlusion.use_incremental`); models ``torch.fx`` cannot trace run densely.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from evalcam.methods.occlusion import use_incremental
from evalcam.metrics.perturbed_scores import class_scores, scores_of_items
from evalcam.models.chunked import fast_layout
from evalcam.models.incremental import incremental_model, one_size, spread, workers

#: bool masks ``[n, 1, H, W]`` (True: replaced) of copies ``k[i]`` of images ``image[i]``
MaskOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: values ``[n, C, H, W]`` of the replaced pixels of copies ``k[i]`` of images ``image[i]``
ValuesOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOCAL_FRACTION = 0.15
#: a clean pass of one image, in batched forwards (the copies' cost model below is relative to the same)
CLEAN_PASS_COST = 1.0
#: fixed cost of one chained step (:func:`chain_cost`), the same step of several images in one call
CHAIN_STEP_COST = 0.55
#: images whose chains step together: their cached clean passes are held at once (~90 MB an image for
#: EfficientNet-Lite0 at 224 px); more rows than 8 saved little per step
CHAIN_ROWS = 8
#: rows step in one call while their boxes grown to one size cover at most this much the smallest's area
SIZE_SLACK = 1.5


def copy_cost(fraction: float) -> float:
    """Measured cost of one incremental copy whose box covers ``fraction`` of the image, in batched
    forwards (EfficientNet-Lite0, CPU, 8 copies per call: 0.51 at 0.5 %, 0.57 at 5 %, 0.71-0.74 at
    8-13 %, 0.82 at 18 %, 0.97 at 33 %)."""
    return 0.5 + 1.5 * fraction


@dataclass
class StepCounts:
    """How the copies of the last call were scored (forward-equivalents saved = ``local`` x (1 - cost))."""

    dense: int = 0
    local: int = 0
    unchanged: int = 0
    clean_passes: int = 0
    #: batch sizes of the clean passes (full forwards through the traced model)
    clean_batches: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)

    def add(self, other: StepCounts) -> None:
        """Add the counts of another job of the same call."""
        self.dense += other.dense
        self.local += other.local
        self.unchanged += other.unchanged
        self.clean_passes += other.clean_passes
        self.clean_batches += other.clean_batches
        self.groups += other.groups


#: counts of the most recent :func:`stepped_scores` call (read by the benchmark and the tests)
LAST = StepCounts()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``[n, 4]`` half-open bounding boxes ``(y0, y1, x0, x1)`` of bool masks ``[n, 1, H, W]``; an empty
    mask gets ``(0, 0, 0, 0)``."""
    rows, cols = masks.flatten(0, 1).any(-1), masks.flatten(0, 1).any(-2)
    height, width = rows.shape[1], cols.shape[1]
    y0 = rows.int().argmax(1)
    y1 = height - rows.flip(1).int().argmax(1)
    x0 = cols.int().argmax(1)
    x1 = width - cols.flip(1).int().argmax(1)
    boxes = torch.stack([y0, y1, x0, x1], 1)
    return torch.where(rows.any(1)[:, None], boxes, torch.zeros_like(boxes))


def _area(box: tuple[int, int, int, int]) -> int:
    return (box[1] - box[0]) * (box[3] - box[2])


@torch.no_grad()
def stepped_scores(
    model: nn.Module,
    base: torch.Tensor,
    classes: torch.Tensor,
    copies: int,
    mask_of: MaskOf,
    values_of: ValuesOf,
    score: str,
    chunk_size: int,
    incremental: bool | str = "auto",
    local_fraction: float = LOCAL_FRACTION,
    nested: bool = False,
) -> torch.Tensor:
    """Scores ``[B, copies]`` of ``classes`` on ``where(mask_of(i, k), values_of(i, k), base[i])``.

    ``nested``: the caller guarantees ``mask_of(i, k) <= mask_of(i, k + 1)`` and values that do not
    depend on ``k`` (a cumulative game with a fixed baseline); copies then step from the previous copy
    (:func:`_run_chains`). Equal to scoring every copy with a full forward (up to float round-off); see the
    module docstring for which copies run incrementally.
    """
    batch, height, width = base.shape[0], int(base.shape[-2]), int(base.shape[-1])
    classes = classes.to(base.device)
    # A transformer's patch embedding is its only local layer: nothing to save, so no trace either.
    convolutional = sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= 3
    local_ok = convolutional and use_incremental(incremental, base.device)
    executor = incremental_model(model) if local_ok else None
    counts = StepCounts()
    out = torch.full((batch, copies), float("nan"), dtype=torch.float64)
    dense: list[tuple[int, int]] = []
    limit = float(local_fraction) * height * width
    plans: dict[int, tuple[list[int], list[tuple[int, ...]]]] = {}
    repeats: list[tuple[int, int]] = []
    chains: list[_ChainPlan] = []
    for i in range(batch):
        if nested and copies > 0:
            chain = _chain_plan(executor, base, i, copies, mask_of, limit)
            if chain.worth:
                chains.append(chain)
                continue
            if any(chain.empty):  # no chain, but inputs equal to the previous copy's are still not run again
                for k in range(copies):
                    (repeats if chain.empty[k] else dense).append((i, k))
                counts.unchanged += sum(chain.empty)
                continue
        local: list[int] = []
        boxes: list[tuple[int, ...]] = []
        if executor is not None and copies:
            image = torch.full((copies,), i, dtype=torch.long, device=base.device)
            masks = mask_of(image, torch.arange(copies, device=base.device))
            boxes = [tuple(int(v) for v in b) for b in mask_boxes(masks).tolist()]
            local = [k for k in range(copies) if _area(boxes[k]) <= limit]
            # an image's clean pass is only worth it when its local copies save more than it costs
            saved = sum(1.0 - copy_cost(_area(boxes[k]) / (height * width)) for k in local)
            local = local if saved > CLEAN_PASS_COST else []
        chosen = set(local)
        dense += [(i, k) for k in range(copies) if k not in chosen]
        if local:
            plans[i] = (local, boxes)
    # Groups of images are independent jobs: they run on the threads torch was given (incremental.spread),
    # each with its own counts, writing only its images' rows of ``out``.
    threads = workers(base.device, max(len(plans), len(chains)))
    # clean passes cached for a few images at a time, like occlusion (bounded over all workers)
    group = max(1, min(int(chunk_size) // 4 // threads, math.ceil(len(plans) / threads)))
    planned = sorted(plans)

    def local_group(images: list[int]) -> tuple[StepCounts, list[tuple[int, int]]]:
        mine, failed_pairs = StepCounts(), []
        cache = executor.clean_pass(fast_layout(model, base[images]))  # type: ignore[union-attr]
        mine.clean_passes += len(images)
        mine.clean_batches.append(len(images))
        for row, i in enumerate(images):
            local, boxes = plans[i]
            unchanged = mine.unchanged
            failed = _score_local(
                executor,
                executor.image_cache(cache, row),  # type: ignore[union-attr]
                base,
                classes,
                i,
                local,
                boxes,
                mask_of,
                values_of,
                score,
                limit,
                max(1, chunk_size),
                out,
                mine,
            )
            mine.local += len(local) - len(failed) - (mine.unchanged - unchanged)
            failed_pairs += [(i, k) for k in failed]
        return mine, failed_pairs

    groups = [planned[lo : lo + group] for lo in range(0, len(planned), group)]
    for mine, failed_pairs in spread(local_group, groups, base.device):
        counts.add(mine)
        dense += failed_pairs

    def chain_group(
        plans_: list[_ChainPlan],
    ) -> tuple[StepCounts, list[tuple[int, int]], list[tuple[int, int]]]:
        mine, more_dense, more_repeats = StepCounts(), [], []
        more = (base, classes, copies, mask_of, values_of, score, out, mine, more_dense, more_repeats)
        _run_chains(model, executor, plans_, *more)  # type: ignore[arg-type]
        return mine, more_dense, more_repeats

    # at most CHAIN_ROWS cached rows at once over all workers (memory), split among them
    rows = max(1, min(int(chunk_size), CHAIN_ROWS // threads, math.ceil(len(chains) / threads)))
    for mine, more_dense, more_repeats in spread(chain_group, _aligned(chains, rows), base.device):
        counts.add(mine)
        dense += more_dense
        repeats += more_repeats  # each image's repeats in step order (the loop below relies on it)
    if dense:
        pairs = torch.tensor(dense, dtype=torch.long, device=base.device)

        def inputs_of(lo: int, hi: int) -> torch.Tensor:
            image, k = pairs[lo:hi, 0], pairs[lo:hi, 1]
            return torch.where(mask_of(image, k), values_of(image, k), base[image])

        scores = scores_of_items(model, len(dense), inputs_of, classes[pairs[:, 0]], score, chunk_size)
        out[pairs[:, 0].cpu(), pairs[:, 1].cpu()] = scores.cpu()
    for i, k in repeats:  # in step order: a repeat of a repeat reads an already filled score
        out[i, k] = out[i, k - 1]
    counts.dense = len(dense)
    LAST.__dict__.update(counts.__dict__)
    return out.to(base.device)


def chain_cost(fraction: float) -> float:
    """Cost of one chained step (one copy, re-computing the cone of a box covering ``fraction`` of the
    image and writing it into the cache), in batched forwards of one image. Measured on
    EfficientNet-Lite0 (CPU, one thread, channels-last, 16 px patches): the same step of 4-8 images in one
    call costs ~0.5 of their batched forward (one image alone: 0.8-0.9), because the cone of even a small
    patch covers most of the late 14x14 and 7x7 maps, which then run densely."""
    return CHAIN_STEP_COST + 1.5 * fraction


@dataclass
class _ChainPlan:
    """Image ``image``'s nested copies: the box of the pixels each adds, and which steps are empty (equal
    to the copy before) or small enough to step incrementally."""

    image: int
    boxes: list[tuple[int, int, int, int]]
    empty: list[bool]
    small: list[bool]
    worth: bool


def _chain_plan(
    executor: Any, base: torch.Tensor, i: int, copies: int, mask_of: MaskOf, limit: float
) -> _ChainPlan:
    """Copy ``k`` differs from copy ``k - 1`` only on the pixels step ``k`` adds: a chain re-computes only
    their box's cone from a cache that holds copy ``k - 1``, however large the union of the earlier steps.
    It is worth its clean pass when its small steps save more than that pass costs."""
    image = torch.full((copies,), i, dtype=torch.long, device=base.device)
    masks = mask_of(image, torch.arange(copies, device=base.device))
    added = masks.clone()
    added[1:] &= ~masks[:-1]
    boxes = [tuple(int(v) for v in b) for b in mask_boxes(added).tolist()]
    # the first copy's "previous" is the base image itself: an empty first step is a dense forward
    empty = [k > 0 and _area(boxes[k]) == 0 for k in range(copies)]
    pixels = base.shape[-2] * base.shape[-1]
    small = [executor is not None and 0 < _area(b) <= limit for b in boxes]
    # A full forward breaks the chain; the next small step first re-runs the copy before it (one more
    # clean pass). A run of small steps is only chained if it saves more than that pass costs.
    k = 0
    while k < copies:
        if not small[k]:
            k += 1
            continue
        end = k
        while end < copies and (small[end] or empty[end]):
            end += 1
        saved = sum(1.0 - chain_cost(_area(boxes[j]) / pixels) for j in range(k, end) if small[j])
        if saved <= CLEAN_PASS_COST:
            small[k:end] = [False] * (end - k)
        k = end
    return _ChainPlan(i, boxes, empty, small, any(small))  # type: ignore[arg-type]


def _run_chains(
    model: nn.Module,
    executor: Any,
    plans: list[_ChainPlan],
    base: torch.Tensor,
    classes: torch.Tensor,
    copies: int,
    mask_of: MaskOf,
    values_of: ValuesOf,
    score: str,
    out: torch.Tensor,
    counts: StepCounts,
    dense: list[tuple[int, int]],
    repeats: list[tuple[int, int]],
) -> None:
    """Score the nested copies of several images, step ``k`` of all of them in one incremental call (one
    cached row per image, one box per image: :meth:`~evalcam.models.incremental.IncrementalModel.advance`).

    A step that adds nothing repeats the previous score (bit-identical input); a step with a large box is a
    full forward (queued in ``dense``), after which the image's row is stale: its next small step first
    re-runs the copy before it into the row
    (:meth:`~evalcam.models.incremental.IncrementalModel.refresh_rows`).
    """
    device = base.device
    images = torch.tensor([p.image for p in plans], dtype=torch.long, device=device)
    values = values_of(images, torch.zeros_like(images))  # nested: the replaced values do not depend on k

    def copy_inputs(rows: list[int], k: int) -> torch.Tensor:
        """Copy ``k`` (``-1``: the base image) of the images of ``rows``."""
        index = torch.tensor(rows, dtype=torch.long, device=device)
        clean = base[images[index]]
        if k < 0:
            return clean
        masks = mask_of(images[index], torch.full_like(index, k))
        return torch.where(masks, values[index], clean)

    # each row starts at the copy before its first small step
    first = [next(k for k in range(copies) if p.small[k]) for p in plans]
    held: list[int | None] = [k - 1 for k in first]  # the copy each row's cache holds (None: stale)
    start = torch.cat([copy_inputs([r], k - 1) for r, k in enumerate(first)])
    cache = executor.chain_pass(fast_layout(model, start))
    counts.clean_passes += len(plans)
    counts.clean_batches.append(len(plans))
    for k in range(copies):
        stepping: list[int] = []
        for r, plan in enumerate(plans):
            if plan.empty[k]:
                repeats.append((plan.image, k))
                counts.unchanged += 1
                if held[r] == k - 1:
                    held[r] = k  # the same input: the row holds copy k as well
            elif plan.small[k]:
                stepping.append(r)
            else:
                dense.append((plan.image, k))
                held[r] = None
        if not stepping:
            continue
        stale = [r for r in stepping if held[r] != k - 1]
        if stale:
            fresh = copy_inputs(stale, k - 1)
            executor.refresh_rows(cache, torch.tensor(stale), fast_layout(model, fresh))
            counts.clean_passes += len(stale)
            counts.clean_batches.append(len(stale))
        for group in _similar_sizes(stepping, [plans[r].boxes[k] for r in stepping]):
            _advance_rows(
                executor, cache, plans, group, k, images, values, base, classes, mask_of, score, out
            )
            for r in group:
                held[r] = k
            counts.groups.append(len(group))
        counts.local += len(stepping)


def _aligned(chains: list[_ChainPlan], rows: int) -> list[list[_ChainPlan]]:
    """Chains in groups of at most ``rows`` whose steps are small, empty and full at the same ``k``: every
    call then steps all rows of the group's cache, and a full forward leaves all of them stale, so rows are
    never copied in or out of the cache one by one (which cost more than the batching saved on IROF's
    superpixels, whose images are small at different steps)."""
    by_pattern: dict[tuple[tuple[bool, ...], tuple[bool, ...]], list[_ChainPlan]] = {}
    for chain in chains:
        by_pattern.setdefault((tuple(chain.small), tuple(chain.empty)), []).append(chain)
    return [same[lo : lo + rows] for same in by_pattern.values() for lo in range(0, len(same), rows)]


def _similar_sizes(rows: list[int], boxes: list[tuple[int, int, int, int]]) -> list[list[int]]:
    """``rows`` in groups whose boxes, grown to one size (:func:`~evalcam.models.incremental.one_size`),
    cover at most ``SIZE_SLACK`` x the smallest one's area: one call for boxes of about one size (region
    perturbation's patches), separate calls for superpixels of very different sizes (IROF)."""
    order = sorted(range(len(rows)), key=lambda j: _area(boxes[j]))
    groups: list[list[int]] = []
    height = width = smallest = 0
    for j in order:
        y0, y1, x0, x1 = boxes[j]
        grown = max(height, y1 - y0) * max(width, x1 - x0)
        if groups and grown <= SIZE_SLACK * smallest:
            groups[-1].append(rows[j])
            height, width = max(height, y1 - y0), max(width, x1 - x0)
        else:
            groups.append([rows[j]])
            height, width, smallest = y1 - y0, x1 - x0, max(1, _area(boxes[j]))
    return groups


def _advance_rows(
    executor: Any,
    cache: Any,
    plans: list[_ChainPlan],
    stepping: list[int],
    k: int,
    images: torch.Tensor,
    values: torch.Tensor,
    base: torch.Tensor,
    classes: torch.Tensor,
    mask_of: MaskOf,
    score: str,
    out: torch.Tensor,
) -> None:
    """Step rows ``stepping`` of a chain cache from copy ``k - 1`` to copy ``k`` in one call; score them."""
    device = base.device
    height, width = int(base.shape[-2]), int(base.shape[-1])
    boxes = one_size([plans[r].boxes[k] for r in stepping], height, width)
    per_copy = boxes * len(stepping) if len(boxes) == 1 else boxes
    masks = mask_of(images[stepping], torch.full((len(stepping),), k, dtype=torch.long, device=device))
    patch = torch.stack(
        [
            torch.where(
                masks[j, :, y0:y1, x0:x1],
                values[r, :, y0:y1, x0:x1],
                base[plans[r].image, :, y0:y1, x0:x1],
            )
            for j, (r, (y0, y1, x0, x1)) in enumerate(zip(stepping, per_copy, strict=True))
        ]
    )
    whole = len(stepping) == len(plans) and stepping == list(range(len(plans)))
    rows = None if whole else torch.tensor(stepping)
    logits = executor.advance(cache, boxes if len(boxes) > 1 else boxes[0], patch, rows=rows)
    scores = class_scores(logits, classes[images[stepping]], score).double().cpu()
    for j, r in enumerate(stepping):
        out[plans[r].image, k] = scores[j]


def _score_local(
    executor: object,
    cache: dict[Any, Any],
    base: torch.Tensor,
    classes: torch.Tensor,
    i: int,
    local: list[int],
    boxes: list[tuple[int, ...]],
    mask_of: MaskOf,
    values_of: ValuesOf,
    score: str,
    limit: float,
    group_size: int,
    out: torch.Tensor,
    counts: StepCounts,
) -> list[int]:
    """Score image ``i``'s local copies from its cached clean pass, in groups sharing a small union box;
    returns the copies that must run as full forwards after all."""
    failed: list[int] = []
    clean_logits = executor.output_of(cache)  # type: ignore[attr-defined]
    cls = classes[i : i + 1]
    groups: list[list[int]] = []
    union: tuple[int, int, int, int] | None = None
    for k in local:
        box = boxes[k]
        if _area(box) == 0:
            counts.unchanged += 1
            out[i, k] = float(class_scores(clean_logits, cls, score)[0])
            continue
        merged = box if union is None else _union(union, box)
        if groups and _area(merged) <= limit and len(groups[-1]) < group_size:
            groups[-1].append(k)
        else:
            groups.append([k])
            merged = box
        union = merged
    for group in groups:
        union = boxes[group[0]]
        for k in group[1:]:
            union = _union(union, boxes[k])
        y0, y1, x0, x1 = union
        image = torch.full((len(group),), i, dtype=torch.long, device=base.device)
        ks = torch.tensor(group, device=base.device)
        crop = (slice(None), slice(None), slice(y0, y1), slice(x0, x1))
        patch = torch.where(mask_of(image, ks)[crop], values_of(image, ks)[crop], base[i : i + 1][crop])
        try:
            logits = executor.patched(cache, union, patch)  # type: ignore[attr-defined]
        except RuntimeError:
            # A layer the engine runs densely mixed a copy with a cached single-image value in a way that
            # does not broadcast (e.g. a concatenation): these copies take full forwards instead.
            failed += group
            continue
        scores = class_scores(logits, cls.expand(len(group)), score).double().cpu()
        out[i, torch.tensor(group)] = scores
        counts.groups.append(len(group))
    return failed


def _union(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, int, int, int]:
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
