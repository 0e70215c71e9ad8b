"""The main runner on transformers: randomly initialised torchvision vit_b_16 and swin_t on two sample
images, and a toy DeiT through ``model=custom`` under every metric and the attention methods."""

from __future__ import annotations

import math

import pytest
from conftest import make_config

from evalcam.runner import run

TOY_DEIT = [
    "model=custom",
    "model.params._target_=evalcam.models.deit.deit",
    "+model.params.image_size=32",
    "+model.params.patch_size=8",
    "+model.params.num_layers=2",
    "+model.params.num_heads=2",
    "+model.params.hidden_dim=16",
    "+model.params.mlp_dim=32",
]
SMALL = ["mlflow=false", "n_examples=0", "batch_size=2", "dataset.limit=2"]


@pytest.mark.filterwarnings("ignore:.*randomly initialised:UserWarning")
@pytest.mark.parametrize(
    ("model", "method"), [("vit_b_16", "transformer_attribution"), ("swin_t", "gradcam")]
)
def test_runner_on_torchvision_transformers(tmp_path, model, method):
    config = make_config(
        tmp_path,
        f"model={model}",
        "model.weights=random",
        f"method={method}",
        "metrics=[weak_loc,energy_pointing]",
        "topk=1",
        "metrics.weak_loc.topk=1",
        *SMALL,
    )  # one class per image: a ViT-B backward pass on 2 CPU cores is slow
    result = run(config)
    m = result.metrics
    assert m["run/images_evaluated"] == 2 and m["weak_loc/images"] == 2
    # Random weights: the numbers mean nothing, but every map has signal and every value is measured.
    assert m["weak_loc/degenerate_maps"] == 0 and m["energy_pointing/degenerate_maps"] == 0
    assert m["energy_pointing/evaluated"] > 0 and 0 <= m["energy_pointing/energy"] <= 1


@pytest.mark.filterwarnings("ignore:.*randomly initialised:UserWarning")
def test_every_metric_runs_on_a_toy_deit_through_model_custom(tmp_path):
    metrics = "weak_loc,maxboxacc,pointing,energy_pointing,deletion,insertion,avg_drop,faithfulness,"
    metrics += "robustness,sanity"
    config = make_config(
        tmp_path,
        *TOY_DEIT,
        "method=transformer_attribution",
        f"metrics=[{metrics}]",
        "metrics.deletion.step=64",
        "metrics.insertion.step=64",
        "metrics.faithfulness.patch_size=8",
        "metrics.faithfulness.stride=8",
        *SMALL,
    )
    m = run(config).metrics
    for name in metrics.split(","):
        assert m[f"{name}/degenerate_maps"] == 0, name
    for key in (
        "weak_loc/top5_loc_error",
        "maxboxacc/max_box_acc",
        "pointing/accuracy",
        "energy_pointing/energy",
        "deletion/auc",
        "insertion/auc",
        "avg_drop/avg_drop",
        "faithfulness/spearman",
        "robustness/fgsm_spearman",
        "sanity/final_spearman",
    ):
        assert math.isfinite(m[key]), key
    assert m["sanity/steps"] == 3  # heads, encoder, patch embedding re-initialised from the top


@pytest.mark.filterwarnings("ignore:.*randomly initialised:UserWarning")
@pytest.mark.parametrize("method", ["attention_rollout", "hirescam", "scorecam"])
def test_methods_on_a_toy_deit_through_the_runner_are_batch_size_free(tmp_path, method):
    base = [*TOY_DEIT, f"method={method}", "metrics=[weak_loc,deletion]", "metrics.deletion.step=64"]
    one = run(make_config(tmp_path / "a", *base, *SMALL)).metrics
    two = run(
        make_config(tmp_path / "b", *base, *[s for s in SMALL if "batch" not in s], "batch_size=1")
    ).metrics
    assert one["weak_loc/degenerate_maps"] == 0
    for key in ("weak_loc/top1_loc_error", "weak_loc/top5_loc_error", "deletion/auc"):
        assert one[key] == pytest.approx(two[key], abs=1e-6), key


def test_cli_refuses_attention_rollout_on_a_cnn_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "evalcam", "run", "method=attention_rollout", "mlflow=false"]
    cmd += [f"output_dir={tmp_path}", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "attention_rollout needs a transformer" in lines[0]
    assert "EfficientNetLite has none" in lines[0] and "use gradcam" in lines[0]


# The Quantus/LATEC families (issue 18) at toy sizes: every one runs through the runner on a transformer.
FAMILIES = {
    "sparseness": [],
    "complexity": [],
    "effective_complexity": [],
    "relevance_mass": ["boxes_as_masks=true"],
    "relevance_rank": ["boxes_as_masks=true"],
    "attribution_localisation": ["boxes_as_masks=true"],
    "topk_intersection": ["boxes_as_masks=true", "k=20"],
    "mask_auc": ["boxes_as_masks=true"],
    "focus": [],
    "max_sensitivity": ["samples=2"],
    "local_lipschitz": ["samples=2"],
    "relative_input_stability": ["samples=2"],
    "relative_output_stability": ["samples=2"],
    "relative_representation_stability": ["samples=2"],
    "continuity": [],
    "emprt": [],
    "smprt": ["samples=2"],
    "random_logit": [],
    "road": ["percentages=[30,70]"],
    "irof": ["n_segments=20", "compactness=0.1"],
    "pixel_flipping": ["steps=8"],
    "region_perturbation": ["patch_size=8", "regions=3"],
    "faithfulness_correlation": ["runs=4", "subset_size=8"],
    "faithfulness_estimate": ["steps=8"],
    "monotonicity_correlation": ["steps=4", "samples=2"],
    "sufficiency": [],
    "infidelity": ["patch_size=8", "stride=8"],
}


@pytest.mark.filterwarnings("ignore:.*randomly initialised:UserWarning")
def test_the_quantus_and_latec_families_run_on_a_toy_deit(tmp_path):
    settings = [f"metrics.{name}.{kv}" for name, kvs in FAMILIES.items() for kv in kvs]
    config = make_config(
        tmp_path,
        *TOY_DEIT,
        "method=gradcam",
        f"metrics=[{','.join(FAMILIES)}]",
        *settings,
        *[s for s in SMALL if not s.startswith(("dataset.limit", "batch_size"))],
        "dataset.limit=3",
        "batch_size=3",
        "stats.bootstrap=0",
    )
    m = run(config).metrics
    for name in FAMILIES:
        keys = [k for k in m if k.startswith(f"{name}/")]
        assert keys, name
        assert all(math.isfinite(m[k]) for k in keys), {k: m[k] for k in keys}
