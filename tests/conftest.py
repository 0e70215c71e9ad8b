"""Shared fixtures and the one home of the test helpers: toy networks, ``EvalBatch`` builders, Hydra
config builders and the CLI runner. Test files import them with ``from conftest import ...``.

Real data lives in ../shared/data (never in this repo); tests that need it skip with a reason when it is
absent."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from evalcam.data.types import Sample
from evalcam.maps import upsample
from evalcam.methods.base import Explainer
from evalcam.methods.gradcam import GradCAM
from evalcam.metrics.base import EvalBatch, Metric
from evalcam.models.bundle import ModelBundle, Preprocess

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EVALCAM_SHARED_DATA", ROOT.parent / "shared" / "data"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def cli_pausing_after_batch(args: list[str], batches: int, seconds: float) -> list[str]:
    """Command running ``python -m evalcam ARGS`` in a child that sleeps once, ``seconds`` long, right after
    its ``batches``-th batch is safely written: a signal sent then lands mid-run however loaded the machine
    is (on a busy CI host a short run could finish before the signal arrives).

    The child restores the SIGINT handler a terminal gives: a shell that starts jobs in the background
    (``nohup ... &``) hands them SIGINT ignored, and Python keeps an ignored SIGINT.
    """
    script = (
        "import signal, time\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from evalcam import results\n"
        "write = results.ResultStore.append\n"
        "written = []\n"
        "def append(self, *args, **kwargs):\n"
        "    path = write(self, *args, **kwargs)\n"
        "    written.append(path)\n"
        # Only once: what the runner writes while it stops must not wait.
        f"    if len(written) == {int(batches)}:\n"
        f"        time.sleep({float(seconds)})\n"
        "    return path\n"
        "results.ResultStore.append = append\n"
        "from evalcam.cli import main\n"
        f"main({list(args)!r})\n"
    )
    return [sys.executable, "-c", script]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data subsets not found at {SHARED_DATA} (set EVALCAM_SHARED_DATA)")
    return SHARED_DATA


def shared_subdir(relative: str) -> Path:
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not present: the real-data subset is needed for this test")
    return path


@pytest.fixture(scope="session")
def lite0():
    from evalcam.models import load_model

    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def photos() -> dict[str, torch.Tensor]:
    """A few real packaged photos as uint8 [3,H,W] (independent of the annotation file)."""
    from evalcam.data.base import uint8_rgb
    from evalcam.data.sample import load_source

    sources = {
        "chelsea": "skimage:chelsea",
        "coffee": "skimage:coffee",
        "grace_hopper": "matplotlib:grace_hopper.jpg",
        "china": "sklearn:china.jpg",
    }
    return {name: uint8_rgb(load_source(src)) for name, src in sources.items()}


def jpeg(path: Path, width: int = 60, height: int = 40, colour=(90, 120, 150)) -> Path:
    """A plain-colour JPEG file at ``path``."""
    Image.new("RGB", (width, height), colour).save(path, quality=90)
    return path


# --- toy networks ---------------------------------------------------------------------------------------
# Weights are drawn when the network is built, from a fixed seed, so every test sees the same numbers.


class LinearToy(nn.Module):
    """logits[k] = <weights[k], x>: every perturbation's effect on a score is known in closed form.
    ``trainable`` only decides whether the weights take gradients (inputs always can)."""

    def __init__(self, weights: torch.Tensor, trainable: bool = False) -> None:
        super().__init__()
        self.weights = nn.Parameter(weights, requires_grad=trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.weights)


class TinyNet(nn.Module):
    """conv1 -> act1 -> conv2 (stride 2) -> act2 -> GAP -> fc, weights from ``torch.manual_seed(0)``; the
    Grad-CAM layer is ``act2``. ``spare`` adds an unused last layer (the sanity check's cascade randomizes
    it first, and re-initializing it cannot change any map)."""

    def __init__(self, classes: int = 4, spare: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(8, classes)
        if spare:
            self.spare = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean((2, 3)))


class ConvToy(nn.Module):
    """conv (3x3) -> act -> GAP -> fc. Weights: the default initialisation after ``torch.manual_seed(0)``,
    or, with ``gaussian_scale``, N(0, scale^2) draws from a private generator seeded 0 (global RNG untouched
    by the draws)."""

    def __init__(
        self, width: int = 6, classes: int = 5, stride: int = 1, gaussian_scale: float | None = None
    ) -> None:
        super().__init__()
        if gaussian_scale is None:
            torch.manual_seed(0)
        self.conv = nn.Conv2d(3, width, 3, padding=1, stride=stride)
        self.act = nn.ReLU()
        self.fc = nn.Linear(width, classes)
        if gaussian_scale is not None:
            generator = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for p in self.parameters():
                    p.copy_(torch.randn(p.shape, generator=generator) * gaussian_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


# --- EvalBatch builders ---------------------------------------------------------------------------------

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def blank_samples(n: int, size: Sequence[int], id_prefix: str = "img") -> list[Sample]:
    """``n`` samples with black uint8 images of ``size`` (h, w), ids ``f"{id_prefix}{i}"`` (seeded metrics
    derive their per-image seed from the id)."""
    return [
        Sample(image=torch.zeros(3, *size, dtype=torch.uint8), image_id=f"{id_prefix}{i}", labels=[])
        for i in range(n)
    ]


def toy_bundle(
    model: nn.Module,
    size: Sequence[int],
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    target_layer: str = "",
) -> ModelBundle:
    return ModelBundle(
        model=model.eval(),
        name="toy",
        target_layer=target_layer,
        preprocess=Preprocess(tuple(size), mean, std),
    )


def make_batch(
    model: nn.Module | ModelBundle,
    inputs: torch.Tensor,
    classes,
    maps: torch.Tensor,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    std: Sequence[float] = (1.0, 1.0, 1.0),
    id_prefix: str = "img",
) -> EvalBatch:
    """A batch with given maps of given classes (no explainer): one map per image, logits of ``model``.
    ``model`` may be a ready :class:`ModelBundle` (then ``mean``/``std`` are its own)."""
    n = inputs.shape[0]
    bundle = model if isinstance(model, ModelBundle) else toy_bundle(model, inputs.shape[-2:], mean, std)
    return EvalBatch(
        samples=blank_samples(n, inputs.shape[-2:], id_prefix),
        inputs=inputs,
        logits=bundle.model(inputs).detach(),
        pred_classes=torch.as_tensor(classes).view(n, 1),
        pred_maps=maps.reshape(n, 1, *maps.shape[-2:]).float(),
        explainer=None,
        bundle=bundle,
    )


def box_sample(image_id: str, cls: int, box: Sequence[float], size: tuple[int, int] = (20, 20)) -> Sample:
    """A black ``size`` image labelled ``cls`` with one non-difficult box [x0, y0, x1, y1] (inclusive)."""
    return Sample(
        image=torch.zeros(3, *size, dtype=torch.uint8),
        image_id=image_id,
        labels=[cls],
        boxes={cls: torch.tensor([box], dtype=torch.float32)},
        difficult={cls: torch.tensor([False])},
        orig_size=size,
    )


def map_batch(
    samples: list[Sample],
    *,
    pred_classes=None,
    pred_maps: torch.Tensor | None = None,
    gt_classes=None,
    gt_maps: torch.Tensor | None = None,
    inputs_size: tuple[int, int] = (8, 8),
    num_classes: int = 10,
) -> EvalBatch:
    """A batch of given maps without a model (zero inputs and logits), for metrics that only read maps and
    annotations. Unset predictions are one class-0 map of 2 x 2 zeros per image."""
    n = len(samples)
    ground_truth = {}
    if gt_classes is not None:
        ground_truth["gt_classes"] = torch.as_tensor(gt_classes)
    if gt_maps is not None:
        ground_truth["gt_maps"] = gt_maps
    return EvalBatch(
        samples=samples,
        inputs=torch.zeros(n, 3, *inputs_size),
        logits=torch.zeros(n, num_classes),
        pred_classes=torch.zeros(n, 1, dtype=torch.long)
        if pred_classes is None
        else torch.as_tensor(pred_classes),
        pred_maps=torch.zeros(n, 1, 2, 2) if pred_maps is None else pred_maps,
        explainer=None,
        bundle=None,
        **ground_truth,
    )


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps' values."""
    return float(torch.corrcoef(torch.stack([a.flatten().float(), b.flatten().float()]))[0, 1])


def assert_merged_halves_equal_one_accumulator(make: Callable[[], Metric]) -> None:
    """Two accumulators fed one half of a batch each, merged, give what one fed the whole batch gives."""
    model = ConvToy().eval()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 3, 8, 8, generator=g)
    maps = torch.rand(4, 4, 4, generator=g)
    classes = model(x).argmax(1).tolist()
    bundle = toy_bundle(model, (8, 8))
    whole, first, second = make(), make(), make()
    whole.update(make_batch(bundle, x, classes, maps, id_prefix=""))
    first.update(make_batch(bundle, x[:2], classes[:2], maps[:2], id_prefix=""))
    second.update(make_batch(bundle, x[2:], classes[2:], maps[2:], id_prefix=""))
    first.merge(second)
    merged, single = first.compute(), whole.compute()
    assert merged.keys() == single.keys()
    assert all(merged[k] == pytest.approx(single[k], abs=1e-9) for k in merged)


def tiny_batch(
    n: int = 3,
    size: int = 16,
    explainer: Explainer | None = None,
    model: nn.Module | None = None,
    id_prefix: str = "img",
    extra: dict | None = None,
) -> EvalBatch:
    """``n`` N(0, 1) inputs (generator seed 2) explained on :class:`TinyNet` (or ``model``) by Grad-CAM at
    ``act2`` (or ``explainer``), top-1 class."""
    # Imported here: the batch step is moving out of metrics/base.py (issue 14), and a failed import at the
    # top of conftest would stop the whole suite from collecting.
    from evalcam.pipeline import explain_batch

    model = (model or TinyNet()).eval()
    bundle = ModelBundle(
        model=model, name="tiny", target_layer="act2", preprocess=Preprocess((size, size), MEAN, STD)
    )
    inputs = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(2))
    explainer = explainer or GradCAM(model, "act2")
    samples = blank_samples(n, (size, size), id_prefix)
    batch = explain_batch(samples, inputs, bundle, explainer, topk=1, need_gt=False)
    return dataclasses.replace(batch) if extra is None else dataclasses.replace(batch, extra=extra)


def quantus_explain(model: nn.Module, inputs, targets, **_kwargs) -> np.ndarray:
    """Quantus' ``explain_func``: evalcam's Grad-CAM of ``targets`` on ``model``, at input resolution."""
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
    maps = GradCAM(model, "act2").explain(x, torch.as_tensor(np.asarray(targets)).long()).maps[:, 0]
    return upsample(maps, tuple(x.shape[-2:]))[:, None].numpy()


# --- configs and the command line -----------------------------------------------------------------------


def compose_config(*overrides: str) -> dict:
    """The run configuration Hydra composes from ``evalcam.conf`` with ``overrides``, resolved."""
    with initialize_config_module(config_module="evalcam.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def make_config(tmp_path: Path, *overrides: str) -> dict:
    """A CPU run writing under ``tmp_path`` (runs/ and an SQLite MLflow store), no progress bar."""
    return compose_config(
        f"output_dir={tmp_path / 'runs'}",
        f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "progress=false",
        "device=cpu",
        *overrides,
    )


def config_for(output: Path, *overrides: str) -> dict:
    """A run writing to ``output`` without MLflow, progress bar or example figures."""
    return compose_config(
        f"output_dir={output}", "mlflow=false", "progress=false", "n_examples=0", *overrides
    )


def cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m evalcam ARGS`` in a child process (one thread), output captured."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "evalcam", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        env=environment,
        timeout=300,
    )


def last_line(done: subprocess.CompletedProcess) -> str:
    return done.stderr.strip().splitlines()[-1]


# --- a small run and its reference numbers (faults, storage) ---------------------------------------------

IMAGES = 3
OVERRIDES = ("device=cpu", "mlflow=false", "n_examples=0", "progress=false", "batch_size=1")


def small_run_config(output: Path, *overrides: str) -> dict:
    """A run of the first ``IMAGES`` sample images, one per batch, writing to ``output``, no MLflow."""
    return compose_config(*OVERRIDES, f"dataset.limit={IMAGES}", f"output_dir={output}", *overrides)


def parts(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "per_image").glob("part-*.parquet"))


def assert_same_numbers(got: dict[str, float], want: dict[str, float]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if key not in ("run/seconds", "run/wall_seconds"):  # times differ between runs
            assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.fixture(scope="session")
def small_reference(tmp_path_factory) -> dict[str, float]:
    """The numbers of an uninterrupted :func:`small_run_config` run."""
    from evalcam.runner import run

    return run(small_run_config(tmp_path_factory.mktemp("reference") / "runs")).metrics
