"""Active-learning strategies served at ``/activelearning/{name}`` (maths in ``orthofm.active``)."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.tasks.strategy import Strategy

from .embedding_strategy import EmbeddingStrategy

DESCRIPTIONS = {
    "random": "Random unlabeled image (baseline)",
    "typiclust": "TypiClust: the most typical image of the largest cluster without labels (best with few labels)",
    "probcover": "ProbCover: the image whose neighbourhood covers the most uncovered images",
    "coreset": "Core-set (k-centre greedy): the image farthest from everything labeled",
    "uncertainty": "Highest entropy (or smallest margin) of the current head's probabilities",
    "hybrid": "Most uncertain image within the clusters least covered by labels",
}


def build_strategies(runtime: Any) -> dict[str, Strategy]:
    return {name: EmbeddingStrategy(name, runtime, desc) for name, desc in DESCRIPTIONS.items()}
