"""Pictures: heatmap overlays, the per-run example grid (image | overlay | boxes), the Grad-CAM paper's
Figure-1 grid (two classes of one image) and per-method heatmap grids; `python -m evalcam figure`."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.util import find_spec
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from evalcam.maps import normalize, upsample


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend, imported on first use: the example grid every run draws
    needs none of it (~0.2 s of a run's start-up beyond ``import matplotlib``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# matplotlib's "jet" (``matplotlib._cm._jet_data``): a 256-entry table built the way LinearSegmentedColormap
# builds it, so overlays need no matplotlib import and match ``plt.get_cmap("jet")`` exactly (tested).
_JET_SEGMENTS = {
    "red": ((0.0, 0, 0), (0.35, 0, 0), (0.66, 1, 1), (0.89, 1, 1), (1, 0.5, 0.5)),
    "green": ((0.0, 0, 0), (0.125, 0, 0), (0.375, 1, 1), (0.64, 1, 1), (0.91, 0, 0), (1, 0, 0)),
    "blue": ((0.0, 0.5, 0.5), (0.11, 1, 1), (0.34, 1, 1), (0.65, 0, 0), (1, 0, 0)),
}
_LUT_SIZE = 256


def _segment_table(segments: Sequence[tuple[float, float, float]], n: int = _LUT_SIZE) -> np.ndarray:
    """``matplotlib.colors._create_lookup_table`` for one channel (gamma 1)."""
    x = np.array([p[0] for p in segments]) * (n - 1)
    below = np.array([p[1] for p in segments])
    above = np.array([p[2] for p in segments])
    points = np.linspace(0, 1, n) * (n - 1)
    index = np.searchsorted(x, points)[1:-1]
    distance = (points[1:-1] - x[index - 1]) / (x[index] - x[index - 1])
    inner = distance * (below[index] - above[index - 1]) + above[index - 1]
    return np.clip(np.concatenate([[above[0]], inner, [below[-1]]]), 0.0, 1.0)


_JET = np.stack([_segment_table(_JET_SEGMENTS[c]) for c in ("red", "green", "blue")], axis=1)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> RGB in [0, 1] (``plt.get_cmap("jet")(values)[..., :3]``)."""
    index = (np.asarray(values, dtype=np.float64) * _LUT_SIZE).astype(np.int64)
    return _JET[np.clip(index, 0, _LUT_SIZE - 1)]


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """uint8 ``[3,H,W]`` image + map at any resolution -> HWC float RGB with a jet heatmap on top."""
    h, w = image.shape[-2:]
    heat = normalize(upsample(cam.detach().float().cpu(), (h, w)))
    heat = torch.nan_to_num(heat, nan=0.0).numpy()
    colored = jet(heat)
    rgb = image.permute(1, 2, 0).cpu().numpy() / 255.0
    return (1 - alpha) * rgb + alpha * colored


@dataclass
class ExampleRow:
    image: torch.Tensor
    cam: torch.Tensor
    title: str
    pred_box: Sequence[float] | None = None
    gt_boxes: list[Sequence[float]] = field(default_factory=list)


# The example grid's geometry (pixels; sizes as matplotlib drew it at EXAMPLE_DPI): one 240 px row per image
# (a 24 px band for the panel titles above its three panels), a band on top for the run name. It is drawn
# with Pillow on a pixel canvas: no matplotlib figure (~0.1 s CPU less per run for 8 rows, and no pyplot
# import), the same image and overlay pixels as the figimage version, text in matplotlib's DejaVu Sans.
EXAMPLE_DPI = 80
WIDTH_PX, ROW_PX, HEADER_PX, SUPTITLE_PX, GAP_PX = 720, 240, 24, 36, 6
HEADER_FONT_PX, TITLE_FONT_PX = 10, 13  # 9 pt and matplotlib's "large" suptitle (12 pt) at 80 dpi
BOX_WIDTH_PX, DASH_PX = 2, (8.2, 3.6)  # linewidth 2 pt; matplotlib's "--" pattern scaled by it


def _shrunk(image: torch.Tensor, pixels: tuple[int, int]) -> torch.Tensor:
    """``[3,H,W]`` uint8 image reduced (antialiased) to fit ``pixels`` = (h, w), never enlarged."""
    h, w = image.shape[-2:]
    scale = min(pixels[0] / h, pixels[1] / w, 1.0)
    if scale >= 1.0:
        return image
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = torch.nn.functional.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True)
    return small[0].round().clamp(0, 255).to(torch.uint8)


@cache
def _font(pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (matplotlib's default font, found without importing matplotlib) at ``pixels``; Pillow's
    own font if that file is missing."""
    spec = find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), pixels)
    try:
        return ImageFont.load_default(pixels)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, pixels: int, below: bool) -> None:
    """``text`` centred on ``x``, its ink starting at ``y`` (``below``) or ending at ``y``."""
    font = _font(pixels)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    position = (round(x - (left + right) / 2), round(y - (top if below else bottom)))
    draw.text(position, text, fill="black", font=font)


def _box(draw: ImageDraw.ImageDraw, box: Sequence[float], corner: tuple[int, int],
         scale: tuple[float, float], color: str, dashed: bool = False) -> None:  # fmt: skip
    """A box ``(x0, y0, x1, y1)`` in image pixels (inclusive) on a picture whose upper-left corner is at
    ``corner`` and which was shrunk by ``scale`` (x, y): its outer edges at the pixel edges of the box."""
    x0, y0, x1, y1 = box
    (left, top), (sx, sy) = corner, scale
    a = (left + (x0 - 0.5) * sx, top + (y0 - 0.5) * sy)
    b = (left + (x1 + 0.5) * sx, top + (y1 + 0.5) * sy)
    corners = [a, (b[0], a[1]), b, (a[0], b[1]), a]
    for (px, py), (qx, qy) in pairwise(corners):
        length = max(abs(qx - px), abs(qy - py), 1e-9)
        on, off = DASH_PX if dashed else (length, 0.0)
        start = 0.0
        while start < length:
            end = min(start + on, length)
            f, g = start / length, end / length
            segment = [(px + (qx - px) * f, py + (qy - py) * f), (px + (qx - px) * g, py + (qy - py) * g)]
            draw.line(segment, fill=color, width=BOX_WIDTH_PX)
            start = end + off


def example_grid(rows: Sequence[ExampleRow], path: str | Path, suptitle: str = "") -> Path:
    """One row per image: the image | the map overlaid | predicted box (red) vs ground truth (green)."""
    n = max(len(rows), 1)
    canvas = Image.new("RGB", (WIDTH_PX, ROW_PX * n + SUPTITLE_PX), "white")
    draw = ImageDraw.Draw(canvas)
    panel_w = WIDTH_PX // 3
    for r, row in enumerate(rows):
        top = SUPTITLE_PX + r * ROW_PX + HEADER_PX  # the pictures' upper edge
        small = _shrunk(row.image.cpu(), (ROW_PX - HEADER_PX - GAP_PX, panel_w - GAP_PX))
        hs, ws = small.shape[-2:]
        rgb = small.permute(1, 2, 0).numpy()
        # float RGB to bytes as matplotlib's figimage did (truncation): the same pixels as before
        heat = (np.clip(overlay(small, row.cam), 0.0, 1.0) * 255).astype(np.uint8)
        pictures = (rgb, heat, rgb)
        headers = (row.title, "map (top-1 class)", "pred box (red) vs ground truth (green)")
        for c, (picture, header) in enumerate(zip(pictures, headers, strict=True)):
            left = c * panel_w + (panel_w - ws) // 2
            canvas.paste(Image.fromarray(np.ascontiguousarray(picture)), (left, top))
            _text(draw, (c + 0.5) * panel_w, top - 4, header, HEADER_FONT_PX, below=False)
        h, w = row.image.shape[-2:]
        corner, scale = (2 * panel_w + (panel_w - ws) // 2, top), (ws / w, hs / h)
        for gt in row.gt_boxes:
            _box(draw, gt, corner, scale, "lime")
        if row.pred_box is not None:
            _box(draw, row.pred_box, corner, scale, "red", dashed=True)
    if suptitle:
        _text(draw, WIDTH_PX / 2, 8, suptitle, TITLE_FONT_PX, below=True)
    path = Path(path)
    path.write_bytes(png_bytes(canvas))
    return path


def png_bytes(canvas: Image.Image) -> bytes:
    """An RGB picture as a PNG file: every row "Sub"-filtered (PNG filter 1), zlib level 1.

    Pillow's PNG encoder tries several filters on every row before compressing (~28 ms of its ~58 ms at
    level 1 for an 8-row example grid, level 6: ~0.18 s); one filter computed with numpy costs ~2 ms and
    the file grows ~4 % (8 rows: 1.29 MB instead of 1.24 MB). Lossless: the same pixels (tested)."""
    import struct
    import zlib

    if canvas.mode != "RGB":
        buffer = io.BytesIO()
        canvas.save(buffer, format="png", compress_level=1)
        return buffer.getvalue()
    pixels = np.asarray(canvas)
    height, width, _ = pixels.shape
    rows = pixels.reshape(height, width * 3)
    filtered = np.empty((height, width * 3 + 1), np.uint8)
    filtered[:, 0] = 1  # Sub: each byte minus the byte of the pixel to its left (mod 256)
    filtered[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=filtered[:, 4:])

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
    data = zlib.compress(filtered.tobytes(), 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _signed_rgb(rgb: torch.Tensor) -> np.ndarray:
    """``[3,H,W]`` signed input gradient -> HWC in [0, 1], the usual guided-backprop rendering (grey = 0)."""
    x = rgb.detach().float().cpu()
    # Scale by a high percentile, not the max: a few extreme pixels would otherwise grey out the rest.
    x = x / torch.quantile(x.abs().flatten(), 0.995).clamp_min(1e-12)
    return (x.clamp(-1, 1) * 0.5 + 0.5).permute(1, 2, 0).numpy()


@dataclass
class Figure1Row:
    """One class of the Figure-1 grid: its name and the three visualisations at image resolution."""

    label: str
    guided_backprop: torch.Tensor  # [3,H,W] signed guided gradient
    gradcam: torch.Tensor  # [h,w] at any resolution
    guided_gradcam: torch.Tensor  # [3,H,W] signed


def figure1_grid(image: torch.Tensor, rows: Sequence[Figure1Row], path: str | Path, title: str = "") -> Path:
    """Grad-CAM paper Figure 1 layout: per class, image | Guided Backprop | Grad-CAM | Guided Grad-CAM."""
    plt = _pyplot()
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 4, figsize=(12, 3.1 * n), squeeze=False)
    rgb = image.permute(1, 2, 0).cpu().numpy()
    for ax_row, row in zip(axes, rows, strict=False):
        panels = [
            (rgb, f"image: '{row.label}'"),
            (_signed_rgb(row.guided_backprop), "Guided Backprop"),
            (overlay(image, row.gradcam), "Grad-CAM"),
            (_signed_rgb(row.guided_gradcam), "Guided Grad-CAM"),
        ]
        for ax, (picture, caption) in zip(ax_row, panels, strict=True):
            ax.imshow(picture)
            ax.set_title(caption, fontsize=9)
            ax.axis("off")
    return _save(fig, path, title)


def method_grid(
    images: Sequence[torch.Tensor],
    maps: dict[str, Sequence[torch.Tensor]],
    path: str | Path,
    row_titles: Sequence[str] = (),
    title: str = "",
) -> Path:
    """Rows: images; columns: the image, then each method's map overlaid (``maps[method][row]``)."""
    methods = list(maps)
    fig, axes = _pyplot().subplots(
        max(len(images), 1),
        len(methods) + 1,
        figsize=(2.4 * (len(methods) + 1), 2.4 * len(images)),
        squeeze=False,
    )
    for r, (ax_row, image) in enumerate(zip(axes, images, strict=False)):
        ax_row[0].imshow(image.permute(1, 2, 0).cpu().numpy())
        ax_row[0].set_title(row_titles[r] if r < len(row_titles) else "", fontsize=8)
        for ax, method in zip(ax_row[1:], methods, strict=True):
            ax.imshow(overlay(image, maps[method][r]))
            if r == 0:
                ax.set_title(method, fontsize=9)
        for ax in ax_row:
            ax.axis("off")
    return _save(fig, path, title)


def _save(fig, path: str | Path, title: str) -> Path:
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    return path


def _class_index(spec: str, categories: Sequence[str]) -> int:
    if spec.strip().isdigit():
        return int(spec)
    lowered = [c.lower() for c in categories]
    if spec.strip().lower() not in lowered:
        raise ValueError(f"unknown class {spec!r}; give an index or one of the model's category names")
    return lowered.index(spec.strip().lower())


def _find_sample(dataset, image_id: str | None):
    from evalcam.data import Sample

    for index in range(len(dataset)):
        if image_id is None or dataset.ids[index] == image_id:
            sample = dataset[index]
            if isinstance(sample, Sample):
                return sample
    raise ValueError(
        f"image {image_id!r} not in the dataset; first ids: {', '.join(map(str, dataset.ids[:8]))}"
    )


def render_figure1(bundle, sample, classes: Sequence[int] | None, path: str | Path) -> tuple[Path, list[int]]:
    """Figure 1 for ``sample``: ``classes`` (default: its first two ground-truth classes, else the top-2)."""
    from evalcam.methods import build_explainer

    inputs = bundle.preprocess([sample.image], bundle.device)
    if not classes:
        classes = list(sample.labels[:2])
    if len(classes) < 2:
        top = bundle.model(inputs).topk(2).indices[0].tolist()
        classes = [*classes, *[c for c in top if c not in classes]][:2]
    targets = torch.tensor([classes], device=bundle.device)
    size = sample.image.shape[-2:]
    guided = build_explainer("guided_backprop", bundle).explain(inputs, targets).extra["rgb"][0]
    gradcam = build_explainer("gradcam", bundle).explain(inputs, targets).maps[0]
    guided_cam = build_explainer("guided_gradcam", bundle).explain(inputs, targets).extra["rgb"][0]

    def to_image(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(x[None].float().cpu(), size=size, mode="bilinear")[0]

    rows = [
        Figure1Row(
            label=bundle.categories[c] if c < len(bundle.categories) else str(c),
            guided_backprop=to_image(guided[k]),
            gradcam=gradcam[k],
            guided_gradcam=to_image(guided_cam[k]),
        )
        for k, c in enumerate(classes)
    ]
    title = f"{sample.image_id} · {bundle.name} · target layer {bundle.target_layer}"
    return figure1_grid(sample.image, rows, path, title), list(classes)


def render_method_grid(bundle, samples, methods: Sequence[str], path: str | Path) -> Path:
    """Top-1 predicted class map of every method for every sample."""
    from evalcam.methods import TopK, build_explainer

    inputs = [bundle.preprocess([s.image], bundle.device) for s in samples]
    maps: dict[str, list[torch.Tensor]] = {}
    for method in methods:
        explainer = build_explainer(method, bundle)
        maps[method] = [explainer.explain(x, TopK(1)).maps[0, 0] for x in inputs]
    with torch.no_grad():
        top1 = [int(bundle.model(x).argmax()) for x in inputs]
    titles = [f"{s.image_id}: {bundle.categories[c] if c < len(bundle.categories) else c}"
              for s, c in zip(samples, top1, strict=True)]  # fmt: skip
    return method_grid([s.image for s in samples], maps, path, titles, f"{bundle.name}, top-1 class")


def log_figure(path: Path, tracking_uri: str | None, experiment: str, run_name: str) -> str:
    """Log the PNG to MLflow as an artifact of a new run in ``experiment``; returns the run id."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags={"kind": "figure"}) as run:
        mlflow.log_artifact(str(path), artifact_path="figures")
        return run.info.run_id


def family_representatives(bundle) -> list[str]:
    """One column per method family: its first registered method that is not expensive (a forward per
    channel or more) and can run on the bundle's model (attention methods need attention layers)."""
    from evalcam.methods import METHODS

    chosen: dict[str, str] = {}
    for name, record in METHODS.items():
        if record.family not in chosen and not record.expensive and record.cls.applies_to(bundle.model):
            if record.family == "activation-cam" and name == "cam" and not bundle.classifier:
                continue  # CAM needs a GAP+FC head
            chosen[record.family] = name
    return list(chosen.values())


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m evalcam figure figure1|grid ...`` (see ``--help``)."""
    import argparse

    from omegaconf import OmegaConf

    from evalcam.config import compose_run_config, load_configured_model
    from evalcam.data import build_dataset

    parser = argparse.ArgumentParser(prog="python -m evalcam figure")
    parser.add_argument("kind", choices=["figure1", "grid"])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument(
        "--dataset", default="sample", help="dataset name; roots come from the usual env vars"
    )
    parser.add_argument(
        "--image", default=None, help="figure1: image id (default: the dataset's first image)"
    )
    parser.add_argument(
        "--classes", default=None, help="figure1: two classes, names or indices, comma-separated"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods (default: the first affordable method of each family that runs on "
        "the model, from the method records)",
    )
    parser.add_argument("--limit", type=int, default=4, help="grid: number of images (rows)")
    parser.add_argument("--out", default=None, help="PNG path (default: reports/figures/<kind>_<model>.png)")
    parser.add_argument("--mlflow", action="store_true", help="also log the PNG to MLflow")
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--experiment", default="evalcam/figures")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    # The model and dataset sections a run composes: target layer and params of conf/model, the dataset's
    # roots, environment variables and defaults.
    config = compose_run_config([f"model={args.model}", f"dataset={args.dataset}"])
    bundle = load_configured_model(OmegaConf.to_container(config.model, resolve=True), device=args.device)
    section = OmegaConf.to_container(config.dataset, resolve=True)
    kwargs = {k: v for k, v in section.items() if k not in ("name", "limit") and v is not None}  # type: ignore[union-attr]
    out = Path(args.out or f"reports/figures/{args.kind}_{args.model}.png")
    if args.kind == "figure1":
        dataset = build_dataset(args.dataset, **kwargs)
        sample = _find_sample(dataset, args.image)
        classes = (
            [_class_index(c, bundle.categories) for c in args.classes.split(",")] if args.classes else None
        )
        path, _ = render_figure1(bundle, sample, classes, out)
    else:
        dataset = build_dataset(args.dataset, limit=args.limit, **kwargs)
        samples = [_find_sample(dataset, image_id) for image_id in dataset.ids[: args.limit]]
        methods = (
            [m for m in args.methods.split(",") if m] if args.methods else family_representatives(bundle)
        )
        path = render_method_grid(bundle, samples, methods, out)
    print(path)
    if args.mlflow:
        run_id = log_figure(
            path, args.tracking_uri, args.experiment, f"{args.kind}·{args.model}·{args.dataset}"
        )
        print(f"MLflow run {run_id}")
