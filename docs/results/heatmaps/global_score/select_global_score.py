"""Which image-level global score to ship, chosen on knee KL *train* only, then reported once on val.

Candidates: 1 - mean cosine similarity of an image's feature to its k nearest KL 0 images, for the CLS token
or the product feature ([CLS ; mean patch]), k in (1, 5, 20). Selection: 5-fold patient-grouped CV on train
(each fold's bank = the other folds' KL 0 images), AUROC KL 0 vs KL 3-4. The winner is then scored on val with
the bank = all train KL 0 images.

Run from the repository root: ``.venv/bin/python docs/results/heatmaps/global_score/select_global_score.py``
(embeddings are cached under runs/embeddings; about 5 min on 2 cores when the cache is cold).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold

from orthofm.heads.embeddings import EmbeddingStore
from orthofm.models import load_backbone

DATA = Path("../shared/data/knee_kl")


def graded(split: str) -> tuple[list[Path], np.ndarray]:
    paths, grades = [], []
    for g in range(5):
        files = sorted((DATA / split / str(g)).glob("*.png"))
        paths += files
        grades += [g] * len(files)
    return paths, np.asarray(grades)


def novelty(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    return 1 - np.sort(unit(queries) @ unit(bank).T, axis=1)[:, -k:].mean(axis=1)


def auroc_34(scores: np.ndarray, grades: np.ndarray) -> float:
    sel = (grades == 0) | (grades >= 3)
    return float(roc_auc_score(grades[sel] >= 3, scores[sel]))


def main(model: str = "monailabel_app/model/orthofm_vits16") -> None:
    store = EmbeddingStore("runs/embeddings", load_backbone(model), progress=False)
    train_paths, tg = graded("train")
    val_paths, vg = graded("val")
    train, val = store.embed_paths(train_paths), store.embed_paths(val_paths)
    patients = np.array([p.stem[:-1] for p in train_paths])  # 9001695L -> 9001695
    d = train.shape[1] // 2
    features = {"cls": slice(0, d), "cls+meanpatch": slice(0, 2 * d)}
    results = {}
    print("| feature | k | train-CV AUROC KL0 vs KL3-4 | train-CV Spearman |\n|---|---|---|---|")
    for name, cols in features.items():
        for k in (1, 5, 20):
            scores = np.zeros(len(train_paths))
            for fit, held in GroupKFold(5).split(train, tg, patients):
                scores[held] = novelty(train[fit][tg[fit] == 0][:, cols], train[held][:, cols], k)
            results[(name, k)] = auroc_34(scores, tg)
            print(f"| {name} | {k} | {results[(name, k)]:.3f} | {spearmanr(scores, tg)[0]:.3f} |")
    name, k = max(results, key=results.get)
    cols = features[name]
    scores = novelty(train[tg == 0][:, cols], val[:, cols], k)
    print(f"\nchosen on train: {name}, k={k}. val (bank = all {int((tg == 0).sum())} train KL 0 images): "
          f"AUROC {auroc_34(scores, vg):.3f}, Spearman {spearmanr(scores, vg)[0]:.3f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
