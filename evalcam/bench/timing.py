"""Interleaved timing rounds with a per-entry time budget."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch

from evalcam.bench.entries import Entry, Timing
from evalcam.devices import synchronize


def time_entries(
    entries: Sequence[Entry],
    x: torch.Tensor,
    classes: torch.Tensor,
    device: torch.device,
    warmup: int,
    repeats: int,
    budget_s: float,
    progress: Callable[[str], None] | None = None,
) -> list[Timing]:
    """Median wall time per entry over ``repeats`` timed rounds after ``warmup`` untimed ones.

    Rounds are interleaved (every entry once per round) so that a change in machine load during the run
    hits every entry alike and the in-run ratios stay meaningful. Each call is set up and torn down on
    its own, so no entry's hooks are attached while another runs. Budget: an entry whose warm call times
    ``repeats`` exceeds ``budget_s`` gets fewer timed rounds (at least one); one whose very first call
    alone exceeds ``budget_s`` (perturbation methods: thousands of forward passes per call, so one-time
    start-up costs are negligible in it) keeps that call as its single measurement.
    """
    batch = x.shape[0]
    warmup = max(1, warmup)
    times: list[list[float]] = [[] for _ in entries]
    allowed = [repeats] * len(entries)
    notes = [e.note for e in entries]
    failed: list[str | None] = [None] * len(entries)
    done_early = [False] * len(entries)
    for round_ in range(warmup + repeats):
        timed = round_ >= warmup
        for i, entry in enumerate(entries):
            if failed[i] is not None or done_early[i] or (timed and len(times[i]) >= allowed[i]):
                continue
            try:
                call, cleanup = entry.setup()
            except Exception as err:  # a peer that cannot handle this model is reported, not fatal
                failed[i] = f"setup failed: {short_error(err)}"
                continue
            try:
                synchronize(device)
                start = time.perf_counter()
                call(x, classes)
                synchronize(device)
                elapsed = time.perf_counter() - start
            except Exception as err:
                failed[i] = f"failed: {short_error(err)}"
                continue
            finally:
                cleanup()
            if timed:
                times[i].append(elapsed)
            elif round_ == 0 and elapsed > budget_s:
                times[i].append(elapsed)
                done_early[i] = True
                notes[i] = ", ".join(filter(None, [notes[i], "budget: 1 run, no warm-up"]))
            elif round_ == warmup - 1 and elapsed * repeats > budget_s:
                allowed[i] = max(1, int(budget_s // max(elapsed, 1e-9)))
                notes[i] = ", ".join(filter(None, [notes[i], f"budget: {allowed[i]} run(s)"]))
        if progress is not None:
            progress(f"round {round_ + 1}/{warmup + repeats} ({'timed' if timed else 'warm-up'}) done")
    timings = []
    for i, entry in enumerate(entries):
        if failed[i] is not None or not times[i]:
            note = failed[i] or "no measurement"
            timings.append(
                Timing(
                    entry.name,
                    entry.library,
                    entry.ours,
                    None,
                    None,
                    len(times[i]),
                    note,
                    comparable=entry.comparable,
                )
            )
            continue
        median = statistics.median(times[i])
        timings.append(
            Timing(
                entry.name,
                entry.library,
                entry.ours,
                median,
                batch / median,
                len(times[i]),
                notes[i],
                times[i],
                entry.comparable,
            )
        )
    return timings


def short_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".splitlines()[0]
    return text[:140]
