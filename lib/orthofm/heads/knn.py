"""Weighted k-nearest-neighbour classifier on L2-normalised features (cosine similarity, T = 0.07).

Each of the k most similar training images votes for its class with weight ``exp(cos / 0.07)`` (the DINO
kNN protocol); with ``balanced`` the votes are divided by the class frequency so a majority grade does
not drown rare ones. k is chosen by leave-one-patient-out accuracy on the training labels (a patient's
other knee is never its own neighbour), and those leave-one-out votes calibrate the temperature.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from .base import FeatureHead, FitResult, balanced_class_weights

__all__ = ["KNNHead"]

log = logging.getLogger(__name__)
EPS = 1e-6
_CHUNK = 1024


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


class KNNHead(FeatureHead):
    """Bank of training features (stored as float16) + labels; logits = log of the vote shares."""

    kind = "knn"

    def __init__(self, n_classes: int, *, ordinal: bool = False, ks: tuple[int, ...] = (5, 10, 20, 50),
                 temperature: float = 0.07, balanced: bool = True) -> None:
        super().__init__(n_classes, ordinal=ordinal)
        self.ks = tuple(int(k) for k in ks)
        self.temperature = float(temperature)
        self.balanced = bool(balanced)
        self.k: int | None = None
        self.bank: np.ndarray | None = None
        self.labels: np.ndarray | None = None
        self.class_weight: np.ndarray | None = None

    def _votes(self, q: np.ndarray, k: int, exclude: np.ndarray | None = None,
               q_groups: np.ndarray | None = None) -> np.ndarray:
        """(N, K) vote shares of the k nearest bank entries; ``exclude`` masks same-patient entries."""
        bank = self.bank.astype(np.float32)
        out = np.zeros((len(q), self.n_classes), dtype=np.float64)
        k = min(k, len(bank))
        for s in range(0, len(q), _CHUNK):
            sims = q[s : s + _CHUNK] @ bank.T
            if exclude is not None:
                sims[q_groups[s : s + _CHUNK, None] == exclude[None, :]] = -np.inf
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            top_sims = np.take_along_axis(sims, top, axis=1).astype(np.float64)
            weights = np.exp((top_sims - 1.0) / self.temperature)  # shift by the max cosine (1) for stability
            weights[~np.isfinite(top_sims)] = 0.0
            votes = np.zeros((len(top), self.n_classes))
            np.add.at(votes, (np.arange(len(top))[:, None], self.labels[top]), weights)
            votes *= self.class_weight
            total = votes.sum(axis=1, keepdims=True)
            out[s : s + _CHUNK] = np.where(total > 0, votes / np.where(total > 0, total, 1), 1.0 / self.n_classes)
        return out

    def fit(self, x: np.ndarray, y: np.ndarray, groups: list[str], *, seed: int = 0) -> FitResult:
        x, y = self.check_xy(x, y, groups)
        self.bank = _normalise(x).astype(np.float16)
        self.labels = y.copy()
        cw = balanced_class_weights(y, self.n_classes) if self.balanced else (np.bincount(y, minlength=self.n_classes) > 0)
        self.class_weight = np.asarray(cw, dtype=np.float64)
        g = np.asarray(groups)
        q = self.bank.astype(np.float32)
        candidates = [k for k in self.ks if k < len(y)] or [max(1, len(y) - 1)]
        scores, shares = {}, {}
        for k in candidates:
            shares[k] = self._votes(q, k, exclude=g, q_groups=g)
            scores[k] = float(np.mean(shares[k].argmax(axis=1) == y))
        self.k = max(candidates, key=lambda k: (scores[k], k))
        log.info("knn: k=%d (leave-one-patient-out accuracy %s)", self.k, scores)
        return FitResult(logits=np.log(shares[self.k] + EPS), y=y,
                         info={"k": self.k, "loo_accuracy": {str(k): v for k, v in scores.items()}})

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.bank is None:
            raise RuntimeError("the kNN head is not fitted")
        return np.log(self._votes(_normalise(x), self.k) + EPS)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"bank": self.bank, "labels": self.labels, "class_weight": self.class_weight}

    def params(self) -> dict[str, Any]:
        return {"k": self.k, "ks": list(self.ks), "temperature": self.temperature, "balanced": self.balanced}

    @classmethod
    def restore(cls, n_classes: int, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> KNNHead:
        head = cls(n_classes, ks=tuple(params["ks"]), temperature=params["temperature"], balanced=params["balanced"])
        head.k = int(params["k"])
        head.bank = arrays["bank"].astype(np.float16)
        head.labels = arrays["labels"].astype(np.int64)
        head.class_weight = arrays["class_weight"].astype(np.float64)
        return head
