"""The throughput benchmark (:mod:`evalcam.bench`): its timing protocol, its ratios, and that every library
in a comparison explains the same classes of the same batch (a benchmark that timed different work
would compare nothing)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from evalcam import bench
from evalcam.bench import Entry, Timing, format_table, time_entries
from evalcam.methods import build_explainer
from evalcam.methods.hooks import count_hooks


def row(table: str, name: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in\n{table}")


def test_table_ratios_are_taken_against_the_floors_and_the_fastest_peer():
    timings = [
        Timing("floor:forward", "torch", None, 0.1, 40.0, 3),
        Timing("floor:forward+grad@layer", "torch", None, 0.2, 20.0, 3),
        Timing("gradcam", "evalcam", "gradcam", 0.25, 16.0, 3),
        Timing("peer-a", "captum", "gradcam", 0.5, 8.0, 3),
        Timing("peer-b", "torchcam", "gradcam", 1.0, 4.0, 3),
        Timing("peer-broken", "torchcam", "gradcam", None, None, 0, "failed: boom"),
    ]
    table = format_table(timings)
    ours = row(table, "gradcam")
    # columns: entry, library, images/s, ms/batch, x forward, x fwd+grad, best peer / ours, runs, note
    assert ours[2:7] == ["16.0", "250.0", "2.50", "1.25", "2.00 (peer-a)"]
    assert row(table, "peer-b")[4:6] == ["10.00", "5.00"]
    assert row(table, "peer-broken")[2] == "n/a"
    assert row(table, "peer-broken")[-1] == "failed: boom"


def sleeper(seconds: float, log: list[str], name: str, cleanups: list[str]) -> Entry:
    def setup():
        def call(x, classes):
            log.append(name)
            time.sleep(seconds)

        return call, lambda: cleanups.append(name)

    return Entry(name, "test", setup)


def test_timing_is_interleaved_budgeted_and_survives_failures():
    log: list[str] = []
    cleanups: list[str] = []

    def broken_call():
        def call(x, classes):
            raise RuntimeError("kernel exploded")

        return call, lambda: cleanups.append("broken")

    def broken_setup():
        raise ValueError("cannot hook this layer")

    entries = [
        sleeper(0.01, log, "fast", cleanups),
        sleeper(0.06, log, "slow", cleanups),
        sleeper(0.2, log, "glacial", cleanups),
        Entry("broken", "test", broken_call),
        Entry("nosetup", "test", broken_setup),
    ]
    x = torch.zeros(4, 3, 8, 8)
    timings = {t.name: t for t in time_entries(entries, x, torch.zeros(4), torch.device("cpu"), 1, 4, 0.15)}

    fast, slow = timings["fast"], timings["slow"]
    assert fast.repeats == 4 and len(fast.times_s) == 4
    assert fast.median_s is not None and fast.median_s >= 0.01
    assert fast.images_per_s == pytest.approx(4 / fast.median_s)
    # 0.06 s x 4 repeats > 0.15 s budget: two timed runs (floor(0.15 / 0.06)), and the note says so.
    assert slow.repeats == 2 and "budget: 2 run(s)" in slow.note
    assert slow.median_s is not None and slow.median_s >= 0.06
    # Rounds alternate the entries (load drift hits all alike), not one entry's repeats in a row.
    assert log[:5] == ["fast", "slow", "glacial", "fast", "slow"]
    # A first call longer than the whole budget is kept as the one measurement, nothing more is run.
    assert timings["glacial"].repeats == 1 and log.count("glacial") == 1
    assert "no warm-up" in timings["glacial"].note
    assert timings["broken"].median_s is None and "kernel exploded" in timings["broken"].note
    assert timings["nosetup"].median_s is None and "setup failed" in timings["nosetup"].note
    # Every call's hooks are torn down, also after a failure.
    assert cleanups.count("fast") == 5 and cleanups.count("slow") == 3 and cleanups.count("broken") == 1
    assert cleanups.count("glacial") == 1


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo + 1e-8)).view_as(m)


def test_peers_explain_the_same_classes_as_evalcam(lite0, photos):
    """Grad-CAM of Captum, TorchCAM and pytorch-grad-cam, as the benchmark calls them, equals evalcam's
    Grad-CAM on the same batch and classes (so their timings compare the same work)."""
    pytest.importorskip("captum")
    pytest.importorskip("torchcam")
    pytest.importorskip("pytorch_grad_cam")
    x = lite0.preprocess([photos["chelsea"], photos["coffee"]], "cpu")
    # Classes that are not the model's top-1 (checked): a peer that silently explained its own top-1
    # prediction instead of the given class would be caught.
    classes = torch.tensor([504, 285])  # coffee mug for the cat, Egyptian cat for the coffee
    with torch.no_grad():
        assert (lite0.model(x).argmax(1) != classes).all()
    ours = build_explainer("gradcam", lite0).explain(x, classes).maps[:, 0]
    entries = {e.name: e for e in bench.peer_entries("gradcam", lite0, bench.available_libraries())}
    assert {"captum:LayerGradCam", "torchcam:GradCAM", "pytorch-grad-cam:GradCAM"} <= set(entries)
    outputs = {}
    for name, entry in entries.items():
        call, cleanup = entry.setup()
        try:
            outputs[name] = call(x, classes)
        finally:
            cleanup()
    assert count_hooks(lite0.model) == 0
    captum_maps = outputs["captum:LayerGradCam"][:, 0]
    torch.testing.assert_close(captum_maps, ours, rtol=1e-4, atol=1e-5 * float(ours.abs().max()))
    torchcam_maps = outputs["torchcam:GradCAM"][0]  # one entry per hooked layer, min-max normalised
    torch.testing.assert_close(torchcam_maps, _minmax(ours), rtol=1e-3, atol=1e-4)
    # pytorch-grad-cam resizes to the input with OpenCV and normalises: same map, other interpolation.
    pgc = torch.as_tensor(outputs["pytorch-grad-cam:GradCAM"])
    up = torch.nn.functional.interpolate(ours[:, None], size=pgc.shape[-2:], mode="bilinear")[:, 0]
    for a, b in zip(pgc, up, strict=True):
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


def test_random_weight_vgg16_hooks_the_grad_cam_papers_layer():
    bundle = bench.build_bundle("vgg16", torch.device("cpu"), random_weights=True, layer=None)
    assert bundle.target_layer == "features.29"
    seen = {}
    layer = dict(bundle.model.named_modules())["features.29"]

    def record(_module, _inputs, output):
        seen["shape"] = tuple(output.shape)

    handle = layer.register_forward_hook(record)
    with torch.no_grad():
        bundle.model(torch.zeros(1, 3, 224, 224))
    handle.remove()
    # conv5_3 after its ReLU: 512 x 14 x 14 at 224 px (Grad-CAM paper, VGG-16 experiments).
    assert isinstance(layer, torch.nn.ReLU) and seen["shape"] == (1, 512, 14, 14)
    with pytest.raises(ValueError, match="torchvision"):
        bench.build_bundle("efficientnet_lite0", torch.device("cpu"), random_weights=True, layer=None)


@pytest.mark.slow
def test_main_runs_end_to_end_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.main(
        [
            "--device=cpu",
            "--model=resnet18",
            "--random-weights",
            "--batch-size=2",
            "--methods=gradcam,center",
            "--repeats=1",
            "--warmup=1",
            "--faith-images=0",
            "--synthetic=3",
            f"--json={out}",
        ]
    )
    printed = capsys.readouterr().out
    assert json.loads(out.read_text())["header"]["model"] == "resnet18 (random init)"
    names = [t["name"] for t in result["timings"]]
    assert names[:3] == ["floor:forward", "floor:forward+grad@layer", "floor:forward+backward"]
    assert {"gradcam", "center", "captum:LayerGradCam"} <= set(names)
    for timing in result["timings"]:
        assert timing["images_per_s"] and timing["images_per_s"] > 0, timing
    syn = result["synthetic"]
    assert syn["images"] == 3 and syn["images_per_s"] > 0
    assert syn["ilsvrc_val_minutes"] == pytest.approx(50_000 / syn["images_per_s"] / 60)
    assert "| gradcam | evalcam |" in printed and "extrapolated ILSVRC2012 val" in printed


def test_captum_guided_backprop_is_not_compared_where_it_does_not_guide(lite0, photos):
    """Captum guides ``nn.ReLU`` only. On EfficientNet-Lite (ReLU6) its "guided" gradient is the plain
    gradient, cheaper for that reason alone, so the table must not rank evalcam against it; on a ReLU
    network the two agree and are compared."""
    pytest.importorskip("captum")
    x = lite0.preprocess([photos["chelsea"]], "cpu")
    classes = torch.tensor([281])
    [entry] = [
        e for e in bench.peer_entries("guided_backprop", lite0, {"captum": None}) if "captum" in e.name
    ]
    call, cleanup = entry.setup()
    theirs = call(x, classes)
    cleanup()
    plain = build_explainer("backprop", lite0).explain(x, classes).extra["rgb"][:, 0]
    guided = build_explainer("guided_backprop", lite0).explain(x, classes).extra["rgb"][:, 0]
    torch.testing.assert_close(theirs, plain)
    assert not torch.allclose(guided, plain, atol=1e-3 * float(plain.abs().max()))
    assert not entry.comparable and "ReLU6" in entry.note

    import torchvision

    from evalcam.models.bundle import ModelBundle, Preprocess

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    bundle = ModelBundle(model=resnet, name="r18", target_layer="layer4", preprocess=Preprocess((64, 64)))
    [entry] = [
        e for e in bench.peer_entries("guided_backprop", bundle, {"captum": None}) if "captum" in e.name
    ]
    call, cleanup = entry.setup()
    small = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    theirs = call(small, torch.tensor([1, 3]))
    cleanup()
    ours = build_explainer("guided_backprop", bundle).explain(small, torch.tensor([1, 3])).extra["rgb"][:, 0]
    torch.testing.assert_close(ours, theirs)
    assert entry.comparable and entry.note == ""


def test_startup_measure_reports_a_child_processes_wall_cpu_and_last_line():
    import sys

    from evalcam.bench.startup import measure

    out = measure([sys.executable, "-c", "import sys; sum(range(3_000_000)); print('first'); print('done')"])
    assert out["returncode"] == 0 and out["last_line"] == "done"
    assert 0 < out["cpu_s"] <= out["wall_s"] + 0.5  # a child's CPU time, not the parent's
    failed = measure([sys.executable, "-c", "raise SystemExit('evalcam: error: bad key')"])
    assert failed["returncode"] == 1 and failed["last_line"] == "evalcam: error: bad key"


def test_end_to_end_line_divides_images_by_the_measured_seconds():
    from evalcam.bench.startup import format_end_to_end

    line = format_end_to_end(
        {"images": 8, "floor_s": 4.0, "run_loop_s": 5.0, "run": {"returncode": 0, "wall_s": 16.0}}
    )
    # 8 / 16 = 0.5 images/s wall, floor 8 / 4 = 2 images/s, ratio 0.25; the loop 1.6 images/s = 0.8x floor
    assert "0.50 images/s wall" in line and "floor 2.00 images/s" in line and "0.25x" in line
    assert "loop / floor 0.80x" in line


def test_sweep_line_divides_the_sweeps_wall_by_the_sum_of_its_loops():
    from evalcam.bench.startup import format_sweep

    run = {"returncode": 0, "wall_s": 30.0, "cpu_s": 20.0, "last_line": ""}
    line = format_sweep({"points": 3, "images": 11, "run": run, "loops_s": [4.0, 6.0, 10.0]})
    assert "30.0 s wall / 20.0 s CPU" in line and "loops (run/seconds) 20.0 s" in line
    assert "wall / loops 1.50x" in line  # 30 / (4 + 6 + 10)
    # A point that did not finish is reported, not divided into a ratio.
    failed = format_sweep({"points": 3, "images": 11, "run": {**run, "returncode": 1, "last_line": "boom"},
                           "loops_s": [4.0]})  # fmt: skip
    assert "1 of 3 points finished: boom" in failed and "x (target" not in failed


def test_sweep_option_rejects_more_points_than_methods_in_one_line(capsys):
    from evalcam.bench.cli import parse_args
    from evalcam.bench.startup import SWEEP_METHODS

    with pytest.raises(SystemExit):
        parse_args(["--sweep", str(len(SWEEP_METHODS) + 1)])
    assert f"--sweep takes 0 to {len(SWEEP_METHODS)} points" in capsys.readouterr().err
    assert parse_args(["--sweep", "3", "--sweep-images", "20"]).sweep_images == 20
