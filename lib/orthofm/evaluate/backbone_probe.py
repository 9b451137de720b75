"""How good are a backbone's frozen features? A logistic-regression probe, train split -> val split.

This is the yardstick of a pretraining run (and of the default model's card): the same probe is fitted on
the backbone's features, on a random-init backbone of the same architecture, and on raw 64x64 pixels, so
the pretrained features have to beat both to count. C is chosen by patient-grouped CV on the training
split only; the val split is touched once, for the reported numbers.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from orthofm.heads.calibration import softmax
from orthofm.heads.embeddings import EmbeddingStore
from orthofm.heads.labels import LabeledSet, load_labels
from orthofm.heads.probe import LogisticProbe
from orthofm.io import read_image, robust_scale

from .metrics import classification_metrics

log = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    name: str
    features: str
    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


def pixel_features(paths: list[Path], size: int = 64) -> np.ndarray:
    """Robustly scaled grey images, area-resized to ``size`` x ``size`` and flattened."""
    out = []
    for path in paths:
        with warnings.catch_warnings():  # thumbnails need no physical spacing
            warnings.simplefilter("ignore")
            array = robust_scale(read_image(path).array)
        t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        out.append(F.interpolate(t, size=(size, size), mode="area").flatten().numpy())
    return np.stack(out)


def _fit_and_score(x_train: np.ndarray, train: LabeledSet, x_val: np.ndarray, val: LabeledSet,
                   ordinal: bool) -> tuple[dict[str, float], dict[str, Any]]:
    head = LogisticProbe(len(train.classes), ordinal=ordinal)
    fit = head.fit(x_train, train.y, list(train.patients), seed=0)
    probs = softmax(head.logits(x_val))
    return classification_metrics(val.y, probs, ordinal=ordinal), dict(fit.info)


def probe_features(name: str, feature_kind: str, x_train: np.ndarray, train: LabeledSet, x_val: np.ndarray,
                   val: LabeledSet) -> ProbeResult:
    ordinal = train.is_ordinal_like
    metrics, info = _fit_and_score(x_train, train, x_val, val, ordinal)
    log.info("%s: acc %.3f qwk %.3f", name, metrics["accuracy"], metrics.get("qwk", float("nan")))
    return ProbeResult(name, feature_kind, metrics, info)


def probe_backbone(backbone: torch.nn.Module, name: str, train: LabeledSet, val: LabeledSet,
                   cache: str | Path) -> ProbeResult:
    store = EmbeddingStore(cache, backbone)
    x_train = store.embed_paths(train.paths)
    x_val = store.embed_paths(val.paths)
    return probe_features(name, "cls+meanpatch", x_train, train, x_val, val)


@dataclass(frozen=True)
class Readout:
    """Which tokens of which block become the probe's input vector.

    ``cls+mean`` is the product's feature (``orthofm.heads.features``); ``cls4+mean`` is the DINOv2 linear
    evaluation's input (CLS of the last 4 blocks + mean patch of the last); ``cls+grid<N>`` keeps the patch
    tokens' layout as an N x N average-pooled grid (aligned crops such as the KL knees carry their signal
    in where things are); ``block<K>:`` reads block K (0-based) instead of the last one.
    """

    name: str
    block: int | None  # None = last block
    cls_blocks: int  # CLS of this many blocks, ending at ``block``
    grid: int  # 0 = mean of the patch tokens, N = N x N pooled grid

    @classmethod
    def parse(cls, text: str) -> Readout:
        name, block = text.strip(), None
        body = name
        if body.startswith("block"):
            head, _, body = body.partition(":")
            if not head[5:].isdigit() or not body:
                raise ValueError(f"readout {text!r}: expected block<K>:<readout>, e.g. block7:cls+mean")
            block = int(head[5:])
        kinds = {"cls+mean": (1, 0), "cls4+mean": (4, 0)}
        if body in kinds:
            return cls(name, block, *kinds[body])
        if body.startswith("cls+grid") and body[8:].isdigit() and int(body[8:]) > 0:
            return cls(name, block, 1, int(body[8:]))
        raise ValueError(f"unknown readout {text!r}: use cls+mean, cls4+mean or cls+grid<N>, optionally "
                         "prefixed by block<K>:")


def _depth(backbone: torch.nn.Module) -> int:
    model = getattr(backbone, "model", None)
    for path in ("blocks", "encoder.layer", "vit.encoder.layer"):
        obj = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
        if obj is not None:
            return len(obj)
    raise ValueError(f"cannot tell how many blocks {type(backbone).__name__} has (needed for block<K> readouts)")


@torch.inference_mode()
def readout_features(backbone: torch.nn.Module, paths: list[Path], readouts: list[Readout],
                     input_size: int | None = None, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Every readout's features of every image, from one pass of the torch backbone per batch (bf16 autocast
    when the CPU runs it natively). ``input_size`` resizes to another canvas than the backbone's own."""
    from orthofm.heads.embeddings import read_pixels
    from orthofm.heads.runtime import autocast, inference_dtype
    from orthofm.io import prepare_2d

    depth = _depth(backbone)
    wanted = {r.name: [(r.block if r.block is not None else depth - 1) - i for i in range(r.cls_blocks)][::-1]
              for r in readouts}
    for name, blocks in wanted.items():
        if min(blocks) < 0 or max(blocks) >= depth:
            raise ValueError(f"readout {name!r} needs blocks {blocks}, but the backbone has {depth} (0..{depth - 1})")
    layers = sorted({b for blocks in wanted.values() for b in blocks})
    pre = backbone.preprocess
    size = input_size or pre.input_size
    out: dict[str, list[np.ndarray]] = {r.name: [] for r in readouts}
    for start in range(0, len(paths), batch_size):
        x = torch.stack([torch.as_tensor(prepare_2d(read_pixels(p).array, size=size, mean=pre.mean, std=pre.std).tensor)
                         for p in paths[start : start + batch_size]])
        with autocast(inference_dtype()):
            by_block = dict(zip(layers, backbone.forward_intermediates(x, layers)))
        for r in readouts:
            blocks = wanted[r.name]
            last = by_block[blocks[-1]]
            parts = [by_block[b]["cls"].float() for b in blocks]
            patches = last["patches"].float()  # (B, h, w, D)
            if r.grid:
                grid = F.adaptive_avg_pool2d(patches.permute(0, 3, 1, 2), r.grid)
                parts.append(grid.flatten(1))
            else:
                parts.append(patches.flatten(1, 2).mean(dim=1))
            out[r.name].append(torch.cat(parts, dim=1).numpy())
    return {name: np.concatenate(chunks) for name, chunks in out.items()}


def probe_readouts(backbone: torch.nn.Module, name: str, train: LabeledSet, val: LabeledSet,
                   readouts: list[Readout], input_size: int | None = None) -> list[ProbeResult]:
    """The same probe on several readouts of one backbone (features are not cached: an experiment tool)."""
    paths = list(train.paths) + list(val.paths)
    feats = readout_features(backbone, paths, readouts, input_size)
    n = len(train.paths)
    suffix = f"@{input_size}px" if input_size else ""
    return [probe_features(name, r.name + suffix, feats[r.name][:n], train, feats[r.name][n:], val)
            for r in readouts]


def compare_to_baselines(weights: str | Path, train_dir: str | Path, val_dir: str | Path, cache: str | Path,
                         baselines: tuple[str, ...] = ("random_init", "pixels64"),
                         readouts: list[Readout] | None = None, input_size: int | None = None) -> list[ProbeResult]:
    """The backbone at ``weights`` against a random-init twin and raw pixels, all with the same probe.

    Without ``readouts`` the features are the product's own (``cls+mean``, cached, through the inference
    engine); with them, every readout is probed for the backbone and its random-init twin alike, so a readout
    that helps only counts when it helps the pretrained weights more than random ones.
    """
    from orthofm.models import backbone_from_config, load_backbone

    train, val = load_labels(train_dir), load_labels(val_dir, classes=None)
    backbone = load_backbone(weights).eval()
    twin = None
    if "random_init" in baselines:
        torch.manual_seed(0)
        twin = backbone_from_config(backbone.config).eval()
    if readouts or input_size:
        chosen = readouts or [Readout.parse("cls+mean")]
        results = probe_readouts(backbone, f"backbone:{Path(weights).name}", train, val, chosen, input_size)
        if twin is not None:
            results += probe_readouts(twin, f"random_init:{backbone.arch}", train, val, chosen, input_size)
    else:
        results = [probe_backbone(backbone, f"backbone:{Path(weights).name}", train, val, cache)]
        if twin is not None:
            results.append(probe_backbone(twin, f"random_init:{backbone.arch}", train, val, cache))
    if "pixels64" in baselines:
        results.append(probe_features("pixels64", "raw 64x64 pixels", pixel_features(train.paths), train,
                                      pixel_features(val.paths), val))
    return results
