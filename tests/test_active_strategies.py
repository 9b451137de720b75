"""orthofm.active: each strategy does what its paper says on data where the right answer is known, and fast."""

from __future__ import annotations

import numpy as np
import pytest

from orthofm.active import (
    STRATEGIES,
    SelectionInput,
    coreset,
    hybrid,
    prepare_features,
    probcover,
    select,
    typiclust,
    uncertainty,
    uncertainty_scores,
)


def blobs(sizes=(300, 200, 100), dim=16, spread=0.05, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Well separated clusters on the unit sphere; returns (x, cluster id)."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.standard_normal((dim, dim)))[0][: len(sizes)]
    xs, ids = [], []
    for c, n in enumerate(sizes):
        xs.append(centres[c] + spread * rng.standard_normal((n, dim)))
        ids.append(np.full(n, c))
    x = np.concatenate(xs).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), np.concatenate(ids)


def test_prepare_features_normalises_and_projects() -> None:
    x = np.random.default_rng(0).standard_normal((50, 768)).astype(np.float32)
    p = prepare_features(x, max_dim=64)
    assert p.shape == (50, 64) and p.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="must be"):
        prepare_features(np.zeros(5))


def test_typiclust_starts_in_the_largest_cluster_and_covers_new_clusters() -> None:
    x, cid = blobs()
    all_idx = np.arange(len(x))
    first = typiclust(x, np.array([], dtype=int), all_idx, budget=1)
    assert cid[first[0]] == 0  # the largest cluster, most typical point
    # with the largest cluster labelled, the next picks come from the other two clusters
    labeled = np.flatnonzero(cid == 0)[:1]
    picks = typiclust(x, labeled, np.setdiff1d(all_idx, labeled), budget=2)
    assert set(cid[picks]) == {1, 2}


def test_typiclust_picks_a_dense_point_not_an_outlier() -> None:
    x, _cid = blobs(sizes=(200,), spread=0.05)
    x = np.concatenate([x, np.ones((1, x.shape[1]), dtype=np.float32) / np.sqrt(x.shape[1])])
    pick = typiclust(x, np.array([], dtype=int), np.arange(len(x)), budget=1)[0]
    d = np.linalg.norm(x[:200] - x[:200].mean(0), axis=1)
    assert pick != len(x) - 1
    assert np.linalg.norm(x[pick] - x[:200].mean(0)) <= np.quantile(d, 0.5)


def test_coreset_takes_the_farthest_point_from_the_labeled_set() -> None:
    x = np.array([[0, 0], [0.1, 0], [0.2, 0], [5, 0], [2, 0]], dtype=np.float32)
    assert coreset(x, np.array([0]), np.array([1, 2, 3, 4]), budget=1).tolist() == [3]
    assert coreset(x, np.array([0]), np.array([1, 2, 3, 4]), budget=2).tolist() == [3, 4]


def test_probcover_covers_every_cluster_before_repeating_one() -> None:
    x, cid = blobs(sizes=(120, 80, 40), spread=0.03)
    picks = probcover(x, np.array([], dtype=int), np.arange(len(x)), budget=3, delta=0.3)
    assert sorted(cid[picks]) == [0, 1, 2]
    assert cid[picks[0]] == 0  # the biggest ball first


def test_uncertainty_entropy_and_margin() -> None:
    probs = np.array([[0.98, 0.01, 0.01], [0.34, 0.33, 0.33], [0.5, 0.5, 0.0], [0.7, 0.2, 0.1]])
    assert uncertainty(probs, np.arange(4), 1, kind="entropy").tolist() == [1]
    assert uncertainty(probs, np.arange(4), 1, kind="margin")[0] in (1, 2)
    assert uncertainty_scores(probs, "margin")[2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown uncertainty"):
        uncertainty_scores(probs, "bald")


def test_hybrid_prefers_uncovered_clusters_then_uncertainty() -> None:
    x, cid = blobs(sizes=(100, 100), spread=0.03)
    probs = np.tile([0.9, 0.1], (len(x), 1))
    unsure = np.flatnonzero(cid == 1)[7]
    probs[unsure] = [0.5, 0.5]
    probs[np.flatnonzero(cid == 0)[3]] = [0.51, 0.49]  # uncertain too, but its cluster is labelled
    labeled = np.flatnonzero(cid == 0)[:5]
    pick = hybrid(x, probs, labeled, np.setdiff1d(np.arange(len(x)), labeled), budget=1)
    assert pick.tolist() == [unsure]


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_returns_distinct_candidates_only(name: str) -> None:
    x, _ = blobs()
    rng = np.random.default_rng(1)
    labeled = rng.choice(len(x), 10, replace=False)
    cand = np.setdiff1d(np.arange(len(x)), labeled)
    probs = rng.dirichlet(np.ones(5), len(x))
    picks = select(name, SelectionInput(x, labeled, cand, probs, seed=3), budget=5)
    assert len(picks) == 5 and len(set(picks.tolist())) == 5
    assert set(picks.tolist()) <= set(cand.tolist())
    assert len(select(name, SelectionInput(x, labeled, np.array([], dtype=int), probs), budget=3)) == 0


def test_uncertainty_strategies_need_probabilities() -> None:
    x, _ = blobs()
    with pytest.raises(ValueError, match="needs class probabilities"):
        select("uncertainty", SelectionInput(x, np.array([0]), np.arange(1, 10)))
    with pytest.raises(ValueError, match="unknown strategy"):
        select("bald", SelectionInput(x, np.array([0]), np.arange(1, 10)))


def test_next_sample_over_10k_embeddings_picks_an_unlabeled_image() -> None:
    """Every strategy handles a 10k-image pool (its speed is measured in benchmarks/bench_app.py)."""
    rng = np.random.default_rng(0)
    x = prepare_features(rng.standard_normal((10_000, 768)).astype(np.float32))
    labeled = np.arange(50)
    cand = np.arange(50, 10_000)
    probs = rng.dirichlet(np.ones(5), len(x))
    for name in STRATEGIES:
        picked = select(name, SelectionInput(x, labeled, cand, probs, seed=0), budget=1)
        assert len(picked) == 1 and int(picked[0]) in set(cand.tolist()), name
