"""Rank statistics against scipy, and the degenerate-map rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from evalcam.metrics.stats import average_ranks, pearson, spearman


def test_average_ranks_match_scipy_on_ties():
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    expected = np.stack([stats.rankdata(row) for row in x.numpy()])
    assert np.array_equal(average_ranks(x).numpy(), expected)
    assert average_ranks(x)[0].tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_known_rankings():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    assert spearman(a, a**3)[0].item() == pytest.approx(1.0)  # monotone: ranks identical
    assert spearman(a, -a)[0].item() == pytest.approx(-1.0)
    # d = rank differences (0, 0, 1, -1, 0): rho = 1 - 6 * 2 / (5 * 24) = 0.9
    assert spearman(a, torch.tensor([[1.0, 2.0, 4.0, 3.0, 5.0]]))[0].item() == pytest.approx(0.9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-3, 3), min_size=4, max_size=30),
    st.integers(0, 2**31 - 1),
)
def test_spearman_and_pearson_equal_scipy(values, seed):
    a = torch.tensor(values, dtype=torch.float64)
    b = torch.randn(len(values), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).round(
        decimals=1
    )
    rho, ok = spearman(a[None], b[None])
    r, ok_r = pearson(a[None], b[None])
    if a.max() == a.min() or b.max() == b.min():
        assert not ok and not ok_r and rho.item() == 0.0 and r.item() == 0.0
        return
    assert ok and ok_r
    assert rho.item() == pytest.approx(stats.spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-10)
    assert r.item() == pytest.approx(stats.pearsonr(a.numpy(), b.numpy()).statistic, abs=1e-10)


def test_rows_are_independent_and_maps_are_flattened():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(3, 4, 5, generator=g), torch.rand(3, 4, 5, generator=g)
    rho, _ = spearman(a, b)
    for i in range(3):
        assert rho[i].item() == pytest.approx(
            stats.spearmanr(a[i].flatten(), b[i].flatten()).statistic, abs=1e-10
        )


@pytest.mark.parametrize(
    "bad", [torch.zeros(6), torch.full((6,), float("nan")), torch.tensor([1, 2, float("inf"), 0, 0, 0])]
)
def test_degenerate_rows_score_zero_and_are_flagged(bad):
    good = torch.arange(6.0)
    rho, ok = spearman(torch.stack([good, bad]), torch.stack([good, good]))
    assert ok.tolist() == [True, False]
    assert rho.tolist() == [pytest.approx(1.0), 0.0]
