"""k-means selection (``strategies.common.kmeans``): the member nearest each cluster centre, shares
by cluster size, exactly n."""

from __future__ import annotations

from collections import Counter

import numpy as np

from everlearn.strategies.common import kmeans as K


def _blobs(sizes: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points in tight bundles around well-separated directions (SSR clusters directions: it
    L2-normalises), at random radii; returns (points, blob of each point)."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, len(sizes), endpoint=False)
    points, owner = [], []
    for b, (a, n) in enumerate(zip(angles, sizes)):
        d = np.array([np.cos(a), np.sin(a), 0.5])
        for _ in range(n):
            points.append(rng.uniform(1, 5) * (d + 0.03 * rng.standard_normal(3)))
            owner.append(b)
    order = rng.permutation(len(points))  # blobs interleaved, not in index blocks
    return np.array(points)[order], np.array(owner)[order]


# --- SSR: the selection -------------------------------------------------------------------
def test_kmeans_selection_picks_the_member_nearest_each_obvious_cluster_centre():
    points, owner = _blobs([7, 5, 9, 6, 8])
    picked = K.select_diverse(points, 5, seed=3)
    assert len(picked) == 5
    assert sorted(owner[picked]) == [0, 1, 2, 3, 4]  # one per cluster
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    for i in picked:  # ... and within it, the one nearest its centroid
        members = np.flatnonzero(owner == owner[i])
        centre = unit[members].mean(0)
        assert i == members[np.argmin(((unit[members] - centre) ** 2).sum(1))]
    assert K.select_diverse(points, 5, seed=3) == picked  # a function of points and seed
    assert K.select_diverse(points, 40, seed=3) == list(range(len(points)))  # fewer than asked


def test_fewer_clusters_share_the_selection_in_proportion_to_their_size():
    points, owner = _blobs([12, 6])
    picked = K.select_diverse(points, 6, n_clusters=2, seed=0)
    assert Counter(owner[picked].tolist()) == {0: 4, 1: 2}  # 6 * 12/18 and 6 * 6/18
    assert K.quotas([5, 3, 2], 4) == [2, 1, 1]  # largest remainders 0.0 < 0.2 = 0.8 -> ties
    assert K.quotas([1, 9], 6) == [1, 5] and sum(K.quotas([3, 3, 3], 5)) == 5
    assert K.quotas([2, 1], 10) == [2, 1]  # never more than a cluster holds


def test_kmeans_selects_exactly_n_even_with_repeated_points():
    points = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5 + [[1.0, 1.0]])
    picked = K.select_diverse(points, 4, seed=0)
    assert len(set(picked)) == 4
    _, labels, _ = K.kmeans(points, 3, seed=0)
    assert len(set(labels.tolist())) == 3  # no cluster left empty
