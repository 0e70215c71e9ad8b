"""Image decoding edge cases, unreadable files, subsets, and the dataset configs under conf/dataset; huge
images and decompression bombs built in tmp_path."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, jpeg, shared_subdir
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image, ImageFile

from evalcam.data import DATASETS, DatasetError, EvalDataset, Sample, SkippedImage, build_dataset
from evalcam.data.base import ImageReadError, read_image, read_rgb, rescale_boxes
from evalcam.data.imagenet import imagenet_wnids

# Three colour patches side by side (and a gray ramp below): easy to check after any conversion.
PATCHES = [(200, 30, 30), (30, 180, 60), (40, 60, 210)]


def patch_image(width: int = 96, height: int = 64) -> np.ndarray:
    array = np.zeros((height, width, 3), dtype=np.uint8)
    for i, colour in enumerate(PATCHES):
        array[: height // 2, i * width // 3 : (i + 1) * width // 3] = colour
    array[height // 2 :] = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None]
    return array


def patch_means(image: torch.Tensor) -> list[list[float]]:
    """Mean RGB of the inner part of each patch (away from JPEG ringing at the edges)."""
    _, height, width = image.shape
    return [
        image[:, 4 : height // 2 - 4, i * width // 3 + 4 : (i + 1) * width // 3 - 4]
        .float()
        .mean((1, 2))
        .tolist()
        for i in range(3)
    ]


@pytest.fixture
def odd_files(tmp_path: Path) -> dict[str, Path]:
    """Files as they occur in the wild under ILSVRC names: a grayscale JPEG, a CMYK JPEG, a PNG saved
    as .JPEG, and unreadable ones."""
    rgb = Image.fromarray(patch_image())
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=95)
    jpeg = buffer.getvalue()

    def save(image: Image.Image, fmt: str):
        return lambda path: image.save(path, format=fmt, quality=95)

    writers = {
        "rgb": save(rgb, "JPEG"),
        "gray": save(rgb.convert("L"), "JPEG"),
        "cmyk": save(rgb.convert("CMYK"), "JPEG"),
        "png": save(rgb, "PNG"),
        "rgba_png": save(rgb.convert("RGBA"), "PNG"),
        "truncated": lambda path: path.write_bytes(jpeg[: len(jpeg) // 2]),
        "empty": lambda path: path.write_bytes(b""),
        "text": lambda path: path.write_text("not an image"),
    }
    folder = tmp_path / "val"
    folder.mkdir()
    paths = {}
    for number, (key, write) in enumerate(writers.items(), start=1):
        paths[key] = folder / f"ILSVRC2012_val_{number:08d}.JPEG"
        write(paths[key])
    return paths


def test_read_rgb_converts_every_mode(odd_files):
    assert not ImageFile.LOAD_TRUNCATED_IMAGES  # otherwise PIL would pad truncated files silently
    original = torch.from_numpy(patch_image()).permute(2, 0, 1)
    for key in ("rgb", "cmyk", "png", "rgba_png"):
        image = read_rgb(odd_files[key])
        assert image.dtype == torch.uint8 and image.shape == (3, 64, 96), key
        for got, want in zip(patch_means(image), PATCHES, strict=True):
            assert np.allclose(got, want, atol=6), (key, got, want)
    assert torch.equal(read_rgb(odd_files["png"]), original)  # lossless
    gray = read_rgb(odd_files["gray"])
    assert gray.shape == (3, 64, 96) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    # ITU-R 601 luma of the red patch: 0.299 * 200 + 0.587 * 30 + 0.114 * 30 = 80.8
    assert abs(patch_means(gray)[0][0] - 80.8) < 4
    for key in ("truncated", "empty", "text"):
        with pytest.raises(OSError):
            read_rgb(odd_files[key])


def test_unreadable_images_become_skipped_samples(odd_files, tmp_path):
    """Through a real loader: good files load as RGB samples, bad ones are skipped with a reason."""
    annotations = tmp_path / "bbox"
    annotations.mkdir()
    wnid = imagenet_wnids()[281]  # tabby cat
    for path in odd_files.values():
        (annotations / f"{path.stem}.xml").write_text(
            f"<annotation><size><width>96</width><height>64</height></size><object><name>{wnid}</name>"
            f"<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object></annotation>"
        )
    dataset = build_dataset("imagenet_val", root=odd_files["rgb"].parent, annotations=annotations)
    assert len(dataset) == 8
    items = {dataset.ids[i]: dataset[i] for i in range(len(dataset))}
    skipped = {k for k, v in items.items() if isinstance(v, SkippedImage)}
    assert skipped == {odd_files[k].stem for k in ("truncated", "empty", "text")}
    assert all(items[k].reason for k in skipped)
    for key in ("rgb", "gray", "cmyk", "png", "rgba_png"):
        sample = items[odd_files[key].stem]
        assert isinstance(sample, Sample) and sample.image.shape == (3, 64, 96) and sample.labels == [281]
        assert sample.boxes[281].tolist() == [[2.0, 3.0, 50.0, 60.0]]  # same size: no rescaling


def test_rescale_boxes_edges():
    whole = torch.tensor([[0.0, 0.0, 499.0, 374.0]])
    assert rescale_boxes(whole, (375, 500), (227, 227)).tolist() == [[0.0, 0.0, 226.0, 226.0]]
    # Doubling: pixel 10 spans [10, 11) -> [20, 22), i.e. pixels 20 and 21.
    assert rescale_boxes(torch.tensor([[10.0, 5.0, 10.0, 5.0]]), (50, 50), (100, 100)).tolist() == [
        [20.0, 10.0, 21.0, 11.0]
    ]
    # Shrinking a one-pixel box never inverts it.
    tiny = rescale_boxes(torch.tensor([[7.0, 7.0, 7.0, 7.0]]), (100, 100), (10, 10))
    assert bool((tiny[:, 2] >= tiny[:, 0]).all() and (tiny[:, 3] >= tiny[:, 1]).all())


class Numbers(EvalDataset):
    """Ten ids with labels id % 3, for the generic subset logic."""

    name = "numbers"

    def __init__(self) -> None:
        super().__init__()
        self.ids = [f"{i:02d}" for i in range(10)]
        self.class_names = ["zero", "one", "two"]

    def labels_for(self, image_id: str) -> list[int]:
        return [int(image_id) % 3]


def test_generic_subset():
    assert Numbers().subset(limit=4).ids == ["00", "01", "02", "03"]
    assert Numbers().subset(classes=["two"]).ids == ["02", "05", "08"]
    assert Numbers().subset(classes=[0, "one"], limit=3).ids == ["00", "01", "03"]
    drawn = Numbers().subset(limit=4, subset_seed=11).ids
    assert drawn == Numbers().subset(limit=4, subset_seed=11).ids == sorted(drawn) and len(drawn) == 4
    assert {tuple(Numbers().subset(limit=4, subset_seed=s).ids) for s in range(6)} != {tuple(drawn)}
    assert Numbers().subset(limit=50, subset_seed=1).ids == Numbers().ids
    with pytest.raises(DatasetError):
        Numbers().subset(classes=[7])


def compose_dataset(overrides: list[str]) -> dict:
    with initialize_config_module(config_module="evalcam.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg.dataset, resolve=True)


def test_every_dataset_has_a_config():
    configs = {p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml")}
    assert configs == set(DATASETS)


def test_configs_read_roots_from_the_environment(monkeypatch):
    shared = shared_subdir("")
    for var in (
        "EVALCAM_IMAGENET_ROOT",
        "EVALCAM_IMAGENET_ANNOTATIONS",
        "EVALCAM_VOC_ROOT",
        "EVALCAM_COCO_ROOT",
    ):
        monkeypatch.delenv(var, raising=False)
    for name in ("imagenet_val", "voc2007", "voc2012", "coco2014", "coco2017"):
        cfg = compose_dataset([f"dataset={name}"])
        assert cfg["root"] is None
        with pytest.raises(DatasetError) as err:
            build_dataset(cfg.pop("name"), **{k: v for k, v in cfg.items() if v is not None})
        assert "\n" not in str(err.value) and "expected" in str(err.value)
    monkeypatch.setenv("EVALCAM_IMAGENET_ROOT", str(shared / "imagenet_val_227/ILSVRC2012_VAL_SET"))
    monkeypatch.setenv(
        "EVALCAM_IMAGENET_ANNOTATIONS", str(shared / "imagenet_meta/wsolevaluation_ILSVRC_test")
    )
    monkeypatch.setenv("EVALCAM_VOC_ROOT", str(shared / "voc2007"))
    monkeypatch.setenv("EVALCAM_COCO_ROOT", str(shared / "coco_val2017_mini"))
    expected = {"imagenet_val": 1300, "voc2007": 503, "coco2017": 79}
    for name, count in expected.items():
        cfg = compose_dataset([f"dataset={name}"])
        dataset = build_dataset(cfg.pop("name"), **{k: v for k, v in cfg.items() if v is not None})
        assert len(dataset) == count
    cfg = compose_dataset(
        ["dataset=voc2007", "dataset.split=trainval", "dataset.limit=5", "dataset.classes=[dog]"]
    )
    dataset = build_dataset(cfg.pop("name"), **{k: v for k, v in cfg.items() if v is not None})
    assert len(dataset) == 5 and all(11 in dataset.labels_for(i) for i in dataset.ids)


# --- bad images and annotations built in tmp_path: fixed or skipped with a reason, never a traceback ---


def test_huge_image_is_decoded_shrunk_and_its_boxes_follow(tmp_path):
    """A 10k x 10k photo decodes at 5k x 5k (25 Mpx) instead of costing gigabytes per map."""
    folder = tmp_path / "val"
    folder.mkdir()
    Image.new("RGB", (10_000, 10_000), (120, 60, 30)).save(
        folder / "ILSVRC2012_val_00000001.JPEG", quality=70
    )
    xml = tmp_path / "bbox"
    xml.mkdir()
    (xml / "ILSVRC2012_val_00000001.xml").write_text(
        f"<annotation><object><name>{imagenet_wnids()[1]}</name><bndbox><xmin>0</xmin><ymin>2000</ymin>"
        "<xmax>9999</xmax><ymax>5999</ymax></bndbox></object></annotation>"
    )
    # No <size>: the stored size from the file header scales the boxes.
    sample = build_dataset("imagenet_val", root=folder, annotations=xml)[0]
    assert sample.orig_size == (10_000, 10_000) and sample.size == (5000, 5000)
    assert sample.boxes[1].tolist() == [[0.0, 1000.0, 4999.0, 2999.0]]
    assert abs(float(sample.image[0].float().mean()) - 120) < 3


def test_decompression_bombs_and_odd_modes(tmp_path, monkeypatch):
    sixteen = tmp_path / "gray16.png"
    Image.fromarray((np.arange(40 * 60).reshape(40, 60) * 27).astype(np.uint16)).save(sixteen)
    image, _ = read_image(sixteen)
    # 16-bit values scaled to 8 bits (PIL's own conversion would clip everything above 255 to white).
    assert int(image.max()) == round(40 * 60 * 27 / 257 - 27 / 257) and int(image[0, 0, 1]) == 0
    jpeg(tmp_path / "small.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the 2400 px image is now a "bomb" (> 2x limit)
    with pytest.raises(ImageReadError, match="DecompressionBombError"):
        read_image(tmp_path / "small.jpg")
