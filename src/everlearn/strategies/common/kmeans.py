"""Seeded k-means and the diverse-subset selection SSR uses (numpy only, no sklearn).

``kmeans`` is Lloyd's algorithm from k-means++ seeds, restarted ``n_init`` times from one
``numpy`` generator (the lowest inertia wins), so the result is a function of the points and the
seed alone. ``select_diverse`` follows the SSR authors' selection script: L2-normalise the
embeddings, cluster them, give every cluster a share of the selection proportional to its size and
keep, inside each cluster, the members nearest its centroid. With as many clusters as items to
select (the default) that is exactly one item per cluster: the one nearest its centroid.
This module's name starts with ``_``: the registry does not scan it.
"""

from __future__ import annotations

import numpy as np


def _sq_dists(points: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape (n_points, n_centers)."""
    return ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)


def _plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next seed drawn with probability
    proportional to its squared distance from the nearest seed so far."""
    n = len(points)
    centers = [points[rng.integers(n)]]
    closest = _sq_dists(points, np.asarray(centers))[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters: repeat a point
            idx = int(rng.integers(n))
        else:
            idx = int(rng.choice(n, p=closest / total))
        centers.append(points[idx])
        closest = np.minimum(closest, _sq_dists(points, points[idx][None])[:, 0])
    return np.asarray(centers)


def kmeans(points: np.ndarray, k: int, seed: int = 0, n_init: int = 4,
           max_iter: int = 100) -> tuple[np.ndarray, np.ndarray, float]:
    """(centroids (k, d), labels (n,), inertia) of the best of ``n_init`` seeded Lloyd runs.

    An empty cluster is re-seeded with the point farthest from its centroid, so every cluster
    keeps at least one member whenever there are at least ``k`` distinct points.
    """
    x = np.asarray(points, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means: expected 1 <= k <= {n} (the number of points), got {k}")
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        centers = _plus_plus(x, k, rng)
        labels = np.full(n, -1)
        for _ in range(max_iter):
            d = _sq_dists(x, centers)
            new = d.argmin(1)
            for c in range(k):
                if not (new == c).any():  # take a point from a cluster that can spare one
                    counts = np.bincount(new, minlength=k)
                    own = np.where(counts[new] > 1, d[np.arange(n), new], -1.0)
                    far = int(own.argmax())
                    new[far] = c
                    centers[c] = x[far]
            if (new == labels).all():
                break
            labels = new
            centers = np.stack([x[labels == c].mean(0) for c in range(k)])
        inertia = float(((x - centers[labels]) ** 2).sum())
        if best is None or inertia < best[2]:
            best = (centers, labels, inertia)
    assert best is not None
    return best


def quotas(sizes: list[int], total: int) -> list[int]:
    """``total`` split over clusters in proportion to their ``sizes`` (largest remainder, ties to
    the lower index), never more than a cluster holds; sums to ``min(total, sum(sizes))``."""
    total = min(total, sum(sizes))
    n = sum(sizes)
    exact = [total * s / n for s in sizes] if n else [0.0] * len(sizes)
    out = [min(int(e), s) for e, s in zip(exact, sizes)]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    while sum(out) < total:
        for i in order:
            if sum(out) < total and out[i] < sizes[i]:
                out[i] += 1
    return out


def select_diverse(embeddings: np.ndarray, n_select: int, n_clusters: int | None = None,
                   seed: int = 0) -> list[int]:
    """Indices (ascending) of ``min(n_select, n)`` diverse rows of ``embeddings``.

    Rows are L2-normalised (as the SSR authors do), clustered into ``n_clusters`` (default
    ``n_select``) by :func:`kmeans`, and each cluster contributes its :func:`quotas` share,
    nearest-to-centroid first.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if n_select >= n:
        return list(range(n))
    if n_select <= 0:
        return []
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    k = min(n_clusters or n_select, n)
    centers, labels, _ = kmeans(x, k, seed=seed)
    dist = ((x - centers[labels]) ** 2).sum(1)
    members = [np.flatnonzero(labels == c) for c in range(k)]
    members = [m[np.lexsort((m, dist[m]))] for m in members]  # nearest first, ties by index
    share = quotas([len(m) for m in members], n_select)
    picked = [int(i) for m, q in zip(members, share) for i in m[:q]]
    return sorted(picked)
