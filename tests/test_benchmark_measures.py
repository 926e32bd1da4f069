"""The benchmark's out-of-scene measures and Pareto front (benchmarks/generalization.py)."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import generalization  # noqa: E402  (benchmarks/ is not a package: its scripts import it as a sibling)


def test_auc_counts_ordered_pairs_and_half_the_ties():
    assert generalization.roc_auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert generalization.roc_auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    # positives 0.5, 0.7 against negatives 0.5, 0.1: pairs (0.5>0.5: tie), (0.5>0.1), (0.7>0.5), (0.7>0.1)
    assert generalization.roc_auc([0.5, 0.7, 0.5, 0.1], [True, True, False, False]) == pytest.approx(3.5 / 4)
    rng = np.random.default_rng(0)
    scores, positive = rng.random(200), rng.random(200) < 0.3
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[positive] for n in scores[~positive]]
    assert generalization.roc_auc(scores, positive) == pytest.approx(np.mean(pairs))
    with pytest.raises(ValueError, match="both positive and negative"):
        generalization.roc_auc([0.1, 0.2], [True, True])


def test_photo_bootstrap_spread_grows_when_photos_disagree():
    photos = np.repeat(np.arange(20), 10)
    uniform = np.tile([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], 20)  # every photo 80%
    clustered = np.repeat(np.r_[np.ones(16), np.zeros(4)], 10)  # whole photos right or wrong
    assert generalization.photo_bootstrap_std(uniform, photos) == pytest.approx(0, abs=1e-12)
    assert generalization.photo_bootstrap_std(clustered, photos) == pytest.approx(np.sqrt(0.8 * 0.2 / 20), rel=0.15)


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(100, 0.9), (50, 0.9), (50, 0.8), (200, 0.95), (300, 0.94), (10, 0.5)]
    assert generalization.pareto_front(points) == [1, 3, 5]
