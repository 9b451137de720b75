"""Near-tie re-check: where bf16 features could flip a grade, the grade is decided on float32 features.

bf16 autocast moves OrthoFM's features by about 0.3 % (relative L2) against float32, spread over every block
(measured: running the first or last blocks in float32 removes almost none of it). For most images that is
invisible, but a weak or ambiguous head puts some images so close to a decision boundary that 0.3 % changes
the grade. Re-embedding just those images in float32 gives the annotator the float32 grade at the cost of one
float32 forward pass for each of them (14 % of knee_kl/train images with the default, weak head; a stronger
head leaves fewer near ties).

The margin is in the units the head decides in: top-1 minus top-2 probability for ``decode='argmax'``, and
the distance of the expected grade to the nearest rounding boundary (x.5) for ``decode='expected'``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .saved import TrainedHead

__all__ = ["RECHECK_MARGIN", "decision_margin", "margin_shift", "near_ties", "redecide_near_ties"]

# Re-check an image when its margin is below this. Chosen on knee_kl/train (not val), 600 training images (every
# 5th), as about twice the largest margin shift between bf16 and float32 features. The default head is now the
# fine-tuned one: 0.0183 (top-1 - top-2) and 0.0258 (expected grade) with torch bf16 autocast, re-checking 14.5 %
# and 6.7 % of the images at these thresholds. (The logistic probe it replaced moved by 0.0092 and 0.0138 under
# torch autocast, 0.0081 and 0.0168 under OpenVINO bf16.) Measure again for a new backbone or head:
# `python -m orthofm.heads.precision --images ../shared/data/knee_kl/train --every 5`.
RECHECK_MARGIN = {"argmax": 0.04, "expected": 0.05}


def decision_margin(head: TrainedHead, probs: np.ndarray) -> np.ndarray:
    """(N,) how far each row of ``probs`` is from changing the decoded class."""
    probs = np.asarray(probs, dtype=np.float64)
    if head.card.decode == "expected":
        grade = probs @ np.arange(probs.shape[1], dtype=np.float64)
        return np.abs(grade - np.floor(grade) - 0.5)
    if probs.shape[1] < 2:
        return np.full(len(probs), np.inf)
    top2 = np.sort(probs, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def near_ties(head: TrainedHead, probs: np.ndarray, margin: float | None = None) -> np.ndarray:
    """Row indices whose decision a bf16-sized feature change could flip (``margin``: default per decode)."""
    limit = RECHECK_MARGIN[head.card.decode] if margin is None else float(margin)
    return np.flatnonzero(decision_margin(head, probs) < limit)


def redecide_near_ties(head: TrainedHead, probs: np.ndarray,
                       exact: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(probs, rechecked mask): rows near a tie get the probabilities of ``exact(rows)``, their float32 features."""
    probs = np.array(probs, dtype=np.float64)
    rechecked = np.zeros(len(probs), dtype=bool)
    rows = near_ties(head, probs)
    if len(rows):
        probs[rows] = head.predict_proba(exact(rows))
        rechecked[rows] = True
    return probs, rechecked


def margin_shift(head: TrainedHead, bf16: np.ndarray, fp32: np.ndarray) -> np.ndarray:
    """(N,) how much bf16 features moved each image's decision margin against float32 features."""
    return np.abs(decision_margin(head, head.predict_proba(bf16)) - decision_margin(head, head.predict_proba(fp32)))


def main(argv: list[str] | None = None) -> int:
    """Measure the bf16 margin shift of a model's head on a labelled folder (choose it on train, never val)."""
    import argparse
    import copy

    import torch

    from orthofm.models import load_backbone

    from .embeddings import EmbeddingStore, list_items
    from .runtime import default_cache_dir, default_model_dir
    from .saved import load_head

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model", default=str(default_model_dir()))
    parser.add_argument("--task", default="knee_kl")
    parser.add_argument("--images", required=True)
    parser.add_argument("--every", type=int, default=1, help="use every n-th image")
    args = parser.parse_args(argv)
    head = load_head(f"{args.model}/heads/{args.task}")
    backbone = head.feature_backbone(load_backbone(args.model))
    items = list_items(args.images)[:: args.every]
    feats = {dt: EmbeddingStore(default_cache_dir(), backbone, dtype=dt, progress=False).embed_paths(items)
             for dt in (torch.bfloat16, torch.float32)}
    for decode in ("argmax", "expected"):
        h = copy.deepcopy(head)
        h.card.decode = decode
        shift = margin_shift(h, feats[torch.bfloat16], feats[torch.float32])
        below = np.mean(decision_margin(h, h.predict_proba(feats[torch.bfloat16])) < RECHECK_MARGIN[decode])
        print(f"{decode}: {len(items)} images, margin shift max {shift.max():.4f} p99 {np.quantile(shift, 0.99):.4f}; "
              f"threshold {RECHECK_MARGIN[decode]} re-checks {below:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
