"""Figure-1 grid and per-method heatmap grids drawn from real maps of EfficientNet-Lite0."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from evalcam import figures
from evalcam.data import build_dataset
from evalcam.figures import ExampleRow, _find_sample, example_grid, main, render_figure1, render_method_grid


@pytest.fixture(scope="module")
def sample_set():
    return build_dataset("sample")


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255


def test_figure1_two_classes_of_one_image(lite0, sample_set, tmp_path):
    sample = _find_sample(sample_set, "grace_hopper")
    path, classes = render_figure1(lite0, sample, None, tmp_path / "figure1.png")
    # Default classes: the image's two annotated classes (military uniform, Windsor tie).
    assert [lite0.categories[c] for c in classes] == ["military uniform", "Windsor tie"]
    pixels = _pixels(path)
    assert pixels.shape == (496, 960, 3)  # 12 x 6.2 inches at 80 dpi: 2 rows x 4 panels
    assert pixels.std() > 0.15 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 5000
    top, bottom = pixels[40:260], pixels[270:490]
    image_col, gradcam_col = slice(40, 220), slice(510, 690)
    # Same photo in column 1; the Grad-CAM column differs between the two classes (class-discriminative).
    assert np.abs(top[:, image_col] - bottom[:, image_col]).mean() < 0.02
    assert np.abs(top[:, gradcam_col] - bottom[:, gradcam_col]).mean() > 0.03


def test_method_grid_rows_are_images_and_columns_methods(lite0, sample_set, tmp_path):
    samples = [_find_sample(sample_set, i) for i in ("chelsea", "coffee")]
    path = render_method_grid(lite0, samples, ["gradcam", "center"], tmp_path / "grid.png")
    pixels = _pixels(path)
    assert pixels.shape == (384, 576, 3)  # (1 + 2 methods) x 2 images, 2.4 inches each at 80 dpi
    center_top, center_bottom = pixels[20:190, 400:570], pixels[210:380, 400:570]
    gradcam_top = pixels[20:190, 210:380]
    # The centre baseline is the same map on both photos; Grad-CAM's map is not the centre map.
    assert np.abs(gradcam_top - center_top).mean() > 0.03
    assert center_top.std() > 0.1 and center_bottom.std() > 0.1


def test_figure_command_writes_png_and_logs_it_to_mlflow(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "fig" / "grid.png"
    main(
        ["grid", "--limit", "1", "--methods", "gradcam", "--out", str(out), "--mlflow", "--tracking-uri", uri]
    )
    assert out.is_file() and Image.open(out).size == (384, 192)
    run_id = capsys.readouterr().out.split("MLflow run ")[1].split()[0]
    artifacts = [a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id, "figures")]
    assert artifacts == ["figures/grid.png"]


def test_grid_default_columns_come_from_the_method_records(lite0):
    from evalcam.figures import family_representatives
    from evalcam.methods import METHODS

    names = family_representatives(lite0)
    families = [METHODS[n].family for n in names]
    assert len(families) == len(set(families))  # one column per family
    assert {"gradient-cam", "input-gradient", "baseline"} <= set(families)
    assert not any(METHODS[n].expensive for n in names)
    assert "attention_rollout" not in names and "transformer_attribution" not in names  # a CNN


def test_readme_methods_table_lists_every_registered_method():
    from pathlib import Path

    from evalcam.methods import METHODS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("## Methods (`method=`)") :].split("\n\n")[1]
    missing = [name for name in METHODS if f"`{name}`" not in table]
    assert not missing, f"README's methods table lacks {missing}"


# The examples figure keeps its title clear of the panel headers (a band on top reserves the room), and
# each header clear of its panel's picture: checked on the pixels (text is the only near-black ink; the
# pictures are grey, the overlay and the boxes coloured).
def test_examples_title_does_not_overlap_the_panel_titles(tmp_path):
    rows = [
        ExampleRow(
            image=torch.full((3, 120, 160), 128, dtype=torch.uint8),
            cam=torch.rand(7, 7, generator=torch.Generator().manual_seed(i)),
            title=f"{i}: tabby cat",
            pred_box=[10, 10, 80, 90],
            gt_boxes=[[20, 20, 100, 100]],
        )
        for i in range(2)
    ]
    path = example_grid(rows, tmp_path / "examples.png", suptitle="scorecam·efficientnet_lite0·imagenet_val")
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert pixels.shape == (36 + 2 * 240, 720, 3)
    ink = (pixels < 60).all(axis=2)  # text
    grey = (pixels == 128).all(axis=2).sum(axis=1) > 100  # rows across the pictures (not text edges)
    ink_rows = np.flatnonzero(ink.any(axis=1))
    title = ink_rows[ink_rows < 36]
    title_columns = np.flatnonzero(ink[title].any(axis=0))
    assert len(title) and abs((title_columns.min() + title_columns.max()) / 2 - 360) < 10  # centred
    for r in range(2):
        band = slice(36 + r * 240, 36 + (r + 1) * 240)
        headers = ink_rows[(ink_rows >= band.start) & (ink_rows < band.stop)]
        picture_top = band.start + np.flatnonzero(grey[band])[0]
        assert len(headers) and title.max() < headers.min()  # the title sits above every header
        assert headers.max() < picture_top  # each header above the pictures of its row
        for c in range(3):  # a header over each of the three panels
            assert ink[headers][:, c * 240 : (c + 1) * 240].any()


def test_overlay_colours_are_matplotlibs_jet():
    from matplotlib import colormaps

    values = np.concatenate([np.linspace(0, 1, 10001), np.random.default_rng(0).random(1000)])
    assert np.array_equal(figures.jet(values), colormaps["jet"](values)[..., :3])


def test_the_example_grid_needs_no_pyplot(tmp_path):
    """Every run draws examples.png: it must not pay for importing pyplot (~0.2 s)."""
    code = (
        "import sys, torch\n"
        "from evalcam.figures import ExampleRow, example_grid\n"
        "row = ExampleRow(torch.zeros(3, 40, 60, dtype=torch.uint8), torch.rand(7, 7), 't', [1, 2, 30, 20])\n"
        f"example_grid([row], {str(tmp_path / 'e.png')!r}, suptitle='s')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "e.png").is_file()


@pytest.mark.parametrize("size", [(1, 1), (1, 7), (5, 1), (37, 23), (720, 300)])
def test_png_bytes_are_lossless(size):
    import io

    width, height = size
    noise = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    noise[: height // 2, : width // 2] = 255  # flat areas as well as noise (wrap-around of Sub)
    data = figures.png_bytes(Image.fromarray(noise))
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "PNG" and decoded.mode == "RGB"
        assert np.array_equal(np.asarray(decoded), noise)
    gray = Image.fromarray(noise[..., 0])  # not RGB: Pillow's encoder
    with Image.open(io.BytesIO(figures.png_bytes(gray))) as decoded:
        assert np.array_equal(np.asarray(decoded), noise[..., 0])


def test_the_example_grid_file_holds_the_drawn_canvas(tmp_path, monkeypatch):
    drawn = []
    encode = figures.png_bytes
    monkeypatch.setattr(figures, "png_bytes", lambda canvas: drawn.append(canvas.copy()) or encode(canvas))
    image = torch.randint(0, 256, (3, 300, 451), dtype=torch.uint8)
    row = ExampleRow(image, torch.rand(7, 7), "t", [1, 2, 300, 200])
    path = example_grid([row, row], tmp_path / "examples.png", suptitle="s")
    with Image.open(path) as decoded:
        assert np.array_equal(np.asarray(decoded), np.asarray(drawn[0]))
