"""Markdown table and text lines of the benchmark's results."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from evalcam.bench.entries import Timing


def format_table(timings: Sequence[Timing]) -> str:
    """Markdown table with ratios: time / forward floor, time / gradient floor, fastest peer / ours."""
    by_name = {t.name: t for t in timings}
    fwd = by_name.get("floor:forward")
    grad = by_name.get("floor:forward+grad@layer")
    fastest_peer: dict[str, Timing] = {}
    for t in timings:
        if t.library not in ("evalcam", "torch") and t.ours and t.median_s is not None and t.comparable:
            best = fastest_peer.get(t.ours)
            if best is None or t.median_s < (best.median_s or math.inf):
                fastest_peer[t.ours] = t
    lines = [
        "| entry | library | images/s | ms/batch | x forward | x fwd+grad | best peer / ours | runs | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]

    def ratio(t: Timing, floor: Timing | None) -> str:
        if t.median_s is None or floor is None or floor.median_s is None:
            return ""
        return f"{t.median_s / floor.median_s:.2f}"

    for t in timings:
        vs_peer = ""
        if t.library == "evalcam" and t.median_s is not None and t.name in fastest_peer:
            peer = fastest_peer[t.name]
            assert peer.median_s is not None
            vs_peer = f"{peer.median_s / t.median_s:.2f} ({peer.name})"
        ips = _rate(t.images_per_s) if t.images_per_s is not None else "n/a"
        ms = f"{t.median_s * 1000:.1f}" if t.median_s is not None else ""
        lines.append(
            f"| {t.name} | {t.library} | {ips} | {ms} | {ratio(t, fwd)} | {ratio(t, grad)} | {vs_peer} | "
            f"{t.repeats} | {t.note} |"
        )
    return "\n".join(lines)


def _rate(value: float) -> str:
    """Three significant figures for slow entries (perturbation methods run at hundredths of an image/s)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def format_faithfulness(faith: dict[str, Any]) -> str:
    lines = [
        f"faithfulness metric (occlusion, {faith['windows_per_image']} windows/image) on Grad-CAM maps, "
        f"{faith['images']} image(s), {faith['runs']} run(s): {faith['images_per_s']:.3f} images/s "
        f"= {faith.get('occluded_inputs_per_s', float('nan')):.1f} occluded inputs/s"
    ]
    dense = faith.get("dense")
    if dense:
        lines.append(
            f"  same metric, incremental=false (a full forward per window): "
            f"{dense.get('occluded_inputs_per_s', float('nan')):.1f} occluded inputs/s; "
            f"incremental speed-up {dense['median_s'] / faith['median_s']:.2f}x"
        )
    ref = faith.get("captum_occlusion")
    if ref and "median_s" in ref:
        lines.append(
            f"  reference captum Occlusion, same window/stride ({ref['windows_per_image']} windows/image): "
            f"{ref['images_per_s']:.3f} images/s = {ref['occluded_inputs_per_s']:.1f} occluded inputs/s"
        )
        if faith.get("occluded_inputs_per_s"):
            lines.append(
                "  ours / captum, occluded inputs per second: "
                f"{faith['occluded_inputs_per_s'] / ref['occluded_inputs_per_s']:.2f}x"
            )
    elif ref:
        lines.append(f"  reference captum Occlusion: {ref['note']}")
    return "\n".join(lines)
