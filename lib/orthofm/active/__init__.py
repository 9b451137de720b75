"""Active learning over cached embeddings: choose the images worth labeling next (see ``strategies``)."""

from .strategies import (
    STRATEGIES,
    SelectionInput,
    coreset,
    hybrid,
    kmeans,
    prepare_features,
    probcover,
    random_choice,
    select,
    typiclust,
    uncertainty,
    uncertainty_scores,
)

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
