"""Scoring methods served at ``/scoring/{name}``."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.tasks.scoring import ScoringMethod

from .embeddings import EmbeddingsScoring


def build_scoring_methods(runtime: Any) -> dict[str, ScoringMethod]:
    return {"embeddings": EmbeddingsScoring(runtime)}
