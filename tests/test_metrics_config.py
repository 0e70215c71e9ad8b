"""Metric configs: one yaml per registered metric (plus aliases), each buildable, and selection through
Hydra with the names of the issue (``metrics=[localization,pointing,...]``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evalcam.metrics import ALIASES, METRICS, build_metrics, canonical_name

CONF = Path(__file__).resolve().parents[1] / "conf" / "metrics"


def _package(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# @package "), f"{path.name}: first line must set the Hydra package"
    return first.removeprefix("# @package ").strip()


def test_every_metric_and_alias_has_a_config_in_its_own_package():
    stems = {p.stem for p in CONF.glob("*.yaml")}
    assert set(METRICS) | set(ALIASES) <= stems
    for path in CONF.glob("*.yaml"):
        assert _package(path) == f"metrics.{path.stem}"
        assert canonical_name(path.stem) in METRICS, f"{path.name} selects no registered metric"


@pytest.mark.parametrize("stem", sorted(p.stem for p in CONF.glob("*.yaml")))
def test_every_config_builds(stem):
    params = yaml.safe_load((CONF / f"{stem}.yaml").read_text()) or {}
    (metric,) = build_metrics({stem: params}, "cpu")
    assert metric.name == canonical_name(stem)


def test_hydra_selects_metrics_by_the_issues_names():
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="evalcam.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["metrics=[localization,pointing,maxboxacc]"])
    settings = OmegaConf.to_container(cfg, resolve=True)["metrics"]
    assert list(settings) == ["localization", "pointing", "maxboxacc"]
    metrics = build_metrics(settings, "cpu")
    # the alias logs under the metric's own name, so runs stay comparable whichever name selected it
    assert [m.name for m in metrics] == ["weak_loc", "pointing", "maxboxacc"]
    assert metrics[0].threshold == 0.15


def test_a_metric_selected_twice_or_unknown_is_refused():
    with pytest.raises(ValueError, match="same metric"):
        build_metrics({"weak_loc": {}, "localization": {}}, "cpu")
    with pytest.raises(ValueError, match="localization"):
        build_metrics({"localisation": {}}, "cpu")
