"""Heads on OrthoFM features: the embedding store, probes, kNN, MLP, last-block fine-tuning, saved heads.

Quick use::

    from orthofm.heads import EmbeddingStore, fit_head, load_head, GradePredictor
    store = EmbeddingStore("~/.cache/orthofm/embeddings", backbone)
    x = store.embed_paths(paths)                        # (N, 2*D) [CLS ; mean patch], cached
    head = fit_head(x, y, patients, classes, kind="probe", ordinal=True)
    head.save("model/heads/knee_kl"); head = load_head("model/heads/knee_kl")
"""

from .base import FeatureHead, FitResult
from .calibration import Calibration, fit_temperature, softmax
from .embeddings import EmbeddingStore, backbone_id, content_hash
from .features import FEATURE_DEFINITION, pool_tokens
from .finetune import FinetuneConfig, FinetuneHead, train_finetune
from .knn import KNNHead
from .labels import LabeledSet, load_labels, patient_id_from_path
from .mlp import MLPHead
from .predictor import GradePredictor, Predictions
from .probe import LogisticProbe
from .saved import HeadCard, TrainedHead, load_head
from .train import TrainHeadConfig, fit_head, make_head, train_task_head

__all__ = [
    "FEATURE_DEFINITION",
    "Calibration",
    "EmbeddingStore",
    "FeatureHead",
    "FinetuneConfig",
    "FinetuneHead",
    "FitResult",
    "GradePredictor",
    "HeadCard",
    "KNNHead",
    "LabeledSet",
    "LogisticProbe",
    "MLPHead",
    "Predictions",
    "TrainHeadConfig",
    "TrainedHead",
    "backbone_id",
    "content_hash",
    "fit_head",
    "fit_temperature",
    "load_head",
    "load_labels",
    "make_head",
    "patient_id_from_path",
    "pool_tokens",
    "softmax",
    "train_finetune",
    "train_task_head",
]
