"""Active-learning selection over cached embeddings: which unlabeled images to label next.

Every strategy takes the feature matrix ``x`` (N, D) of all images, the indices already labeled and the
indices that may be chosen, and returns up to ``budget`` chosen indices (most wanted first). Pure numpy (+ faiss
for k-means when installed); features are L2-normalised and, above ``max_dim``, randomly projected
(Johnson-Lindenstrauss) so that 100k images take seconds, not minutes.

- ``random``: the baseline every other strategy must beat.
- ``coreset``: k-centre greedy (Sener & Savarese 2018): the candidate farthest from everything labeled.
- ``typiclust``: TypiClust (Hacohen et al. 2022): cluster into |L|+budget clusters, take the most typical
  point (densest k-NN neighbourhood) of the largest cluster with no labels yet. Strong in the low-budget regime.
- ``probcover``: ProbCover (Yehuda et al. 2022): greedy max coverage of delta-balls in feature space.
- ``uncertainty``: entropy or margin of the current head's calibrated probabilities.
- ``hybrid``: uncertainty within diversity: cluster the candidates, visit clusters least covered by labels
  first, and pick the most uncertain member of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "STRATEGIES",
    "SelectionInput",
    "coreset",
    "hybrid",
    "kmeans",
    "prepare_features",
    "probcover",
    "random_choice",
    "select",
    "typiclust",
    "uncertainty",
    "uncertainty_scores",
]

STRATEGIES = ("random", "coreset", "typiclust", "probcover", "uncertainty", "hybrid")


@dataclass
class SelectionInput:
    """What every strategy sees. ``probs`` (N, K) only for the uncertainty-based ones."""

    x: np.ndarray
    labeled: np.ndarray
    candidates: np.ndarray
    probs: np.ndarray | None = None
    seed: int = 0


def prepare_features(x: np.ndarray, max_dim: int = 128, seed: int = 0) -> np.ndarray:
    """L2-normalised float32 features, randomly projected to ``max_dim`` when wider (distances kept ~1+-eps)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    x = x - x.mean(axis=0, keepdims=True) if len(x) > 1 else x
    if x.shape[1] > max_dim:
        rng = np.random.default_rng(seed)
        proj = rng.standard_normal((x.shape[1], max_dim), dtype=np.float32) / np.sqrt(max_dim)
        x = x @ proj
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _as_idx(a: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


def _sq_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared euclidean distances (len(a), len(b)) for row vectors."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def random_choice(candidates: np.ndarray, budget: int = 1, seed: int = 0) -> np.ndarray:
    cand = _as_idx(candidates)
    rng = np.random.default_rng(seed)
    return rng.permutation(cand)[:budget]


def coreset(x: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, budget: int = 1,
            seed: int = 0, chunk: int = 65536) -> np.ndarray:
    """k-centre greedy: repeatedly take the candidate with the largest distance to its nearest centre."""
    cand = _as_idx(candidates)
    lab = _as_idx(labeled)
    if len(cand) == 0:
        return cand
    xc = x[cand]
    if len(lab):
        mind = np.full(len(cand), np.inf, dtype=np.float32)
        for s in range(0, len(lab), 4096):
            for c in range(0, len(cand), chunk):
                d = _sq_dist(xc[c:c + chunk], x[lab[s:s + 4096]]).min(axis=1)
                mind[c:c + chunk] = np.minimum(mind[c:c + chunk], d)
    else:  # nothing labeled: start from the point nearest the centre of the data, then spread out
        centre = xc.mean(axis=0, keepdims=True)
        mind = -_sq_dist(xc, centre)[:, 0]
        first = int(np.argmax(mind))
        mind = _sq_dist(xc, xc[first:first + 1])[:, 0]
        mind[first] = -np.inf
        chosen = [first]
        return cand[_greedy(xc, mind, chosen, budget)]
    return cand[_greedy(xc, mind, [], budget)]


def _greedy(xc: np.ndarray, mind: np.ndarray, chosen: list[int], budget: int) -> np.ndarray:
    mind = mind.copy()
    for i in chosen:
        mind[i] = -np.inf
    while len(chosen) < min(budget, len(xc)):
        j = int(np.argmax(mind))
        if not np.isfinite(mind[j]):
            break
        chosen.append(j)
        mind = np.minimum(mind, _sq_dist(xc, xc[j:j + 1])[:, 0])
        mind[chosen] = -np.inf
    return np.asarray(chosen[:budget], dtype=np.int64)


def kmeans(x: np.ndarray, k: int, seed: int = 0, niter: int = 10, max_train: int = 10000) -> np.ndarray:
    """Cluster assignment (N,) with k clusters; faiss when available, Lloyd in numpy otherwise.

    Centroids are fitted on at most ``max_train`` points (uniform sample), then every point is assigned."""
    n = len(x)
    k = int(max(1, min(k, n)))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train = x if n <= max_train else x[rng.choice(n, max_train, replace=False)]
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        # one thread: on a shared 2-core box OpenMP's spinning threads made k-means ~10x slower than serial
        previous = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            # faiss.Clustering + its index, not the faiss.Kmeans wrapper: the wrapper copies centroids out
            # through a SWIG std::vector<float> proxy, which breaks when another SWIG module (SimpleITK)
            # registered that type first. Clustering leaves the centroids in the index, which is all we need.
            clus = faiss.Clustering(x.shape[1], k)
            clus.niter, clus.seed, clus.verbose = niter, seed, False
            clus.min_points_per_centroid = 1
            clus.max_points_per_centroid = max(1, len(train) // k + 1)
            index = faiss.IndexFlatL2(x.shape[1])
            clus.train(np.ascontiguousarray(train, dtype=np.float32), index)
            _, assign = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
            return assign[:, 0].astype(np.int64)
        finally:
            faiss.omp_set_num_threads(previous)
    else:
        centres = train[rng.choice(len(train), k, replace=False)]
        for _ in range(niter):
            assign = _sq_dist(train, centres).argmin(1)
            for c in range(k):
                members = train[assign == c]
                if len(members):
                    centres[c] = members.mean(0)
        return np.concatenate([_sq_dist(x[s:s + 65536], centres).argmin(1) for s in range(0, n, 65536)])


def _typicality(xm: np.ndarray, k: int) -> np.ndarray:
    """1 / mean distance to the k nearest neighbours inside the cluster (TypiClust's density)."""
    n = len(xm)
    if n == 1:
        return np.ones(1, dtype=np.float32)
    k = min(k, n - 1)
    out = np.empty(n, dtype=np.float32)
    for s in range(0, n, 512):
        d = np.sqrt(_sq_dist(xm[s:s + 512], xm))
        part = np.partition(d, k, axis=1)[:, 1:k + 1]  # column 0 is the point itself
        out[s:s + 512] = 1.0 / (part.mean(axis=1) + 1e-8)
    return out


def _cluster_pool(x: np.ndarray, lab: np.ndarray, cand: np.ndarray, budget: int, max_clusters: int,
                  seed: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """k-means over labeled + candidates with one cluster per label to hold (TypiClust's K): the cluster count,
    each pool point's cluster, labeled images per cluster, and each candidate's cluster."""
    pool = np.union1d(lab, cand)
    n_clusters = min(len(lab) + budget, max_clusters, len(pool))
    assign_pool = kmeans(x[pool], n_clusters, seed=seed)
    assign = dict(zip(pool.tolist(), assign_pool.tolist()))
    labeled_per = np.bincount([assign[i] for i in lab], minlength=n_clusters) if len(lab) else np.zeros(
        n_clusters, dtype=np.int64)
    cand_cluster = np.asarray([assign[i] for i in cand], dtype=np.int64)
    return n_clusters, assign_pool, labeled_per, cand_cluster


def typiclust(x: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, budget: int = 1, seed: int = 0,
              k_nn: int = 20, max_clusters: int = 500, max_cluster_points: int = 2000) -> np.ndarray:
    """TypiClust: most typical member of the largest clusters that hold no labeled image yet."""
    lab, cand = _as_idx(labeled), _as_idx(candidates)
    if len(cand) == 0:
        return cand
    n_clusters, assign_pool, labeled_per, cand_cluster = _cluster_pool(x, lab, cand, budget, max_clusters, seed)
    size = np.bincount(assign_pool, minlength=n_clusters)
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    taken = np.zeros(len(cand), dtype=bool)
    while len(chosen) < min(budget, len(cand)):
        # fewest labels first, then largest; clusters without any remaining candidate are skipped
        avail = np.bincount(cand_cluster[~taken], minlength=n_clusters) > 0
        order = np.lexsort((-size, labeled_per))
        order = [c for c in order if avail[c]]
        if not order:
            break
        c = order[0]
        members = np.flatnonzero((cand_cluster == c) & ~taken)
        if len(members) > max_cluster_points:
            members = rng.choice(members, max_cluster_points, replace=False)
        typ = _typicality(x[cand[members]], k_nn)
        pick = members[int(np.argmax(typ))]
        chosen.append(int(cand[pick]))
        taken[pick] = True
        labeled_per[c] += 1
    return np.asarray(chosen, dtype=np.int64)


def _default_delta(xs: np.ndarray, seed: int, k: int = 10) -> float:
    """Ball radius: median distance to the k-th nearest neighbour (ProbCover picks delta for high purity;
    without labels this keeps balls local: about k neighbours each)."""
    rng = np.random.default_rng(seed)
    probe = xs[rng.choice(len(xs), min(len(xs), 500), replace=False)]
    d = np.sqrt(_sq_dist(probe, xs))
    k = min(k, len(xs) - 1)
    return float(np.median(np.partition(d, k, axis=1)[:, k])) if k > 0 else 1.0


def probcover(x: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, budget: int = 1, seed: int = 0,
              delta: float | None = None, max_points: int = 4000, max_candidates: int = 2000) -> np.ndarray:
    """ProbCover: greedily pick the candidate whose delta-ball covers the most not-yet-covered points.

    Coverage is counted on a uniform sample of at most ``max_points`` points (labeled points always in)."""
    lab, cand = _as_idx(labeled), _as_idx(candidates)
    if len(cand) == 0:
        return cand
    rng = np.random.default_rng(seed)
    pool = np.union1d(lab, cand)
    if len(pool) > max_points:
        pool = np.union1d(lab, rng.choice(cand, max(1, max_points - len(lab)), replace=False))
    xs = x[pool]
    delta = _default_delta(xs, seed) if delta is None else float(delta)
    d2 = delta * delta
    covered = np.zeros(len(pool), dtype=bool)
    pos = {int(v): i for i, v in enumerate(pool)}
    for i in lab:
        covered |= _sq_dist(xs, x[i:i + 1])[:, 0] <= d2
    cand_in = np.asarray([pos[int(c)] for c in cand if int(c) in pos], dtype=np.int64)
    if len(cand_in) > max_candidates:
        cand_in = rng.choice(cand_in, max_candidates, replace=False)
    # adjacency of candidates to pool points, in blocks (boolean, N_cand x N_pool)
    adj = np.zeros((len(cand_in), len(pool)), dtype=bool)
    for s in range(0, len(cand_in), 2048):
        adj[s:s + 2048] = _sq_dist(xs[cand_in[s:s + 2048]], xs) <= d2
    chosen: list[int] = []
    alive = np.ones(len(cand_in), dtype=bool)
    while len(chosen) < min(budget, len(cand_in)):
        gain = (adj & ~covered[None, :]).sum(axis=1)
        gain[~alive] = -1
        j = int(np.argmax(gain))
        if gain[j] <= 0:  # everything covered: fall back to the farthest remaining candidate
            rest = np.flatnonzero(alive)
            if not len(rest):
                break
            j = int(rest[rng.integers(len(rest))])
        chosen.append(int(pool[cand_in[j]]))
        covered |= adj[j]
        alive[j] = False
    return np.asarray(chosen, dtype=np.int64)


def uncertainty_scores(probs: np.ndarray, kind: str = "entropy") -> np.ndarray:
    """Higher = more uncertain. ``entropy`` of p, or ``margin`` = 1 - (p_top1 - p_top2)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    if kind == "entropy":
        return -(p * np.log(p)).sum(axis=1)
    if kind == "margin":
        top = np.sort(p, axis=1)[:, -2:]
        return 1.0 - (top[:, 1] - top[:, 0])
    raise ValueError(f"unknown uncertainty kind {kind!r}; use 'entropy' or 'margin'")


def uncertainty(probs: np.ndarray, candidates: np.ndarray, budget: int = 1, kind: str = "entropy") -> np.ndarray:
    """The candidates the current head is least sure about (``probs`` rows indexed like ``x``)."""
    cand = _as_idx(candidates)
    if len(cand) == 0:
        return cand
    score = uncertainty_scores(probs[cand], kind)
    return cand[np.argsort(-score, kind="stable")[:budget]]


def hybrid(x: np.ndarray, probs: np.ndarray, labeled: np.ndarray, candidates: np.ndarray, budget: int = 1,
           seed: int = 0, kind: str = "entropy", max_clusters: int = 500) -> np.ndarray:
    """Uncertainty within diverse clusters: clusters with the fewest labels first, most uncertain member each."""
    lab, cand = _as_idx(labeled), _as_idx(candidates)
    if len(cand) == 0:
        return cand
    n_clusters, _, labeled_per, cand_cluster = _cluster_pool(x, lab, cand, budget, max_clusters, seed)
    score = uncertainty_scores(probs[cand], kind)
    chosen: list[int] = []
    taken = np.zeros(len(cand), dtype=bool)
    while len(chosen) < min(budget, len(cand)):
        avail = np.bincount(cand_cluster[~taken], minlength=n_clusters) > 0
        # least-covered clusters first; among equals, the one holding the most uncertain candidate
        best_unc = np.full(n_clusters, -np.inf)
        np.maximum.at(best_unc, cand_cluster[~taken], score[~taken])
        order = [c for c in np.lexsort((-best_unc, labeled_per)) if avail[c]]
        if not order:
            break
        c = order[0]
        members = np.flatnonzero((cand_cluster == c) & ~taken)
        pick = members[int(np.argmax(score[members]))]
        chosen.append(int(cand[pick]))
        taken[pick] = True
        labeled_per[c] += 1
    return np.asarray(chosen, dtype=np.int64)


def select(strategy: str, inp: SelectionInput, budget: int = 1, **kwargs) -> np.ndarray:
    """Dispatch by name; uncertainty-based strategies need ``inp.probs``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    if strategy == "random":
        return random_choice(inp.candidates, budget, inp.seed)
    if strategy in ("uncertainty", "hybrid") and inp.probs is None:
        raise ValueError(f"strategy {strategy!r} needs class probabilities from a trained head")
    if strategy == "coreset":
        return coreset(inp.x, inp.labeled, inp.candidates, budget, inp.seed)
    if strategy == "typiclust":
        return typiclust(inp.x, inp.labeled, inp.candidates, budget, inp.seed, **kwargs)
    if strategy == "probcover":
        return probcover(inp.x, inp.labeled, inp.candidates, budget, inp.seed, **kwargs)
    if strategy == "uncertainty":
        return uncertainty(inp.probs, inp.candidates, budget, **kwargs)
    return hybrid(inp.x, inp.probs, inp.labeled, inp.candidates, budget, inp.seed, **kwargs)
