"""Normal memory banks: coreset patch tokens of normal images, searched exactly (torch or faiss), saved with a card.

A bank is a folder::

    banks/knee/
        bank.json      the card: backbone id + fingerprint, anatomy, input size, source images, coreset
                       ratio, sizes, and the normal-score calibration the engine uses for thresholds
        features.npy   (N, D) float16 L2-normalised patch tokens (renormalised to float32 on load)

The folder is written next to its final place and swapped in with ``os.replace``, so a reader sees the
old bank or the complete new one. ``features.npy`` carries its SHA-256 in the card; a mismatch on load
(a half-copied bank) is an error, not silently wrong heatmaps.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from orthofm.utils.atomic import fsync_dir

__all__ = ["BANK_CARD", "BANK_FEATURES", "BANK_IMAGES", "GLOBAL_K", "BankCard", "BankError", "NormalBank", "l2_normalise"]

BANK_CARD = "bank.json"
BANK_FEATURES = "features.npy"
BANK_IMAGES = "images.npy"  # one CLS token per source image: the image-level (global) novelty score
GLOBAL_K = 5  # global score = 1 - mean cosine similarity to the 5 nearest normal images (chosen by train CV)
FORMAT_VERSION = 1
SEARCH_BLOCK = 4096  # queries per matrix product: bounds the (block, N) similarity matrix
RESCORE_CANDIDATES = 4  # low-precision search: nearest candidates re-scored in float32


class BankError(ValueError):
    """A normal bank that cannot be used: missing, corrupt, or made for another backbone."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class BankCard:
    backbone_id: str
    backbone_fingerprint: str
    anatomy: str
    input_size: int
    dim: int
    n_source_images: int
    n_patches_total: int
    n_patches: int
    coreset_ratio: float
    projection_dim: int
    seed: int = 0
    dtype: str = "float16"
    features_sha256: str = ""
    n_image_features: int = 0
    image_features_sha256: str = ""
    sources_sha256: str = ""
    created: str = ""
    orthofm_version: str = ""
    format_version: int = FORMAT_VERSION
    # per method: {"map_quantiles": [101 floats], "image_scores": [...], "n_images": int}
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BankCard:
        known = {f for f in cls.__dataclass_fields__}
        missing = {"backbone_id", "anatomy", "input_size", "dim", "n_patches"} - set(d)
        if missing:
            raise BankError(f"bank card lacks {sorted(missing)}")
        return cls(**{k: v for k, v in d.items() if k in known})


class NormalBank:
    """Patch tokens of normal images (L2-normalised) + card; ``max_similarity`` answers 1-NN cosine."""

    def __init__(self, features: np.ndarray, card: BankCard, image_features: np.ndarray | None = None) -> None:
        feats = l2_normalise(features)
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise BankError(f"bank features must be a non-empty (N, D) matrix, got {feats.shape}")
        if feats.shape[1] != card.dim:
            raise BankError(f"bank features have dim {feats.shape[1]} but the card says {card.dim}")
        self.features = np.ascontiguousarray(feats)
        self.card = card
        self._index: faiss.Index | None = None
        self._matrices: dict[torch.dtype, torch.Tensor] = {}
        self.image_features: np.ndarray | None = None
        if image_features is not None and len(image_features):
            imgs = l2_normalise(image_features)
            if imgs.ndim != 2 or imgs.shape[1] != card.dim:
                raise BankError(f"bank image features must be (M, {card.dim}), got {imgs.shape}")
            self.image_features = np.ascontiguousarray(imgs)
            card.n_image_features = int(imgs.shape[0])

    def __len__(self) -> int:
        return self.features.shape[0]

    @property
    def index(self) -> faiss.Index:
        """Exact inner-product faiss index (cosine on normalised vectors), built on first use."""
        if self._index is None:
            index = faiss.IndexFlatIP(self.card.dim)
            index.add(self.features)
            self._index = index
        return self._index

    def max_similarity(self, queries: np.ndarray, dtype: torch.dtype | None = None) -> np.ndarray:
        """Cosine similarity of each query (M, D) to its nearest bank patch (M,), by exact search.

        ``dtype`` None searches with faiss's flat index in float32. A torch dtype searches with one matrix
        product per block of queries instead; in bf16 the top ``RESCORE_CANDIDATES`` are re-scored in float32,
        so the similarity is float32's unless bf16 ranked the true nearest patch below four others. On the 2-core
        AVX512-BF16 host one radiograph's 196 patches against a 4,096-patch bank took 1.8 ms (bf16 product)
        and 5.1 ms (fp32) where faiss took 10.3 ms; the engine passes its own inference dtype.
        """
        q = l2_normalise(queries)
        if q.ndim != 2 or q.shape[1] != self.card.dim:
            raise BankError(f"queries of shape {q.shape} do not match bank dim {self.card.dim}")
        if dtype is None:
            sims, _ = self.index.search(np.ascontiguousarray(q), 1)
            return np.clip(sims[:, 0], -1.0, 1.0)
        bank = self._matrix(dtype)
        exact = torch.from_numpy(self.features)
        k = min(RESCORE_CANDIDATES, len(self))
        out = np.empty(len(q), dtype=np.float32)
        with torch.inference_mode():
            qt = torch.from_numpy(q)
            for start in range(0, len(q), SEARCH_BLOCK):
                rows = qt[start : start + SEARCH_BLOCK]
                sims = rows.to(dtype) @ bank
                if dtype == torch.float32:
                    best = sims.amax(dim=1)
                else:  # bf16 rounds a similarity to ~4e-3: re-score its top candidates in float32
                    idx = sims.topk(k, dim=1).indices
                    best = torch.einsum("md,mkd->mk", rows, exact[idx]).amax(dim=1)
                out[start : start + SEARCH_BLOCK] = best.numpy()
        return np.clip(out, -1.0, 1.0)

    def global_novelty(self, cls: np.ndarray, k: int = GLOBAL_K) -> float | None:
        """1 - mean cosine similarity of an image's CLS token to its ``k`` nearest normal images.

        Image-level, not from a map: on knee KL val it separated KL 0 from KL 3-4 with AUROC 0.67 where the
        patch maps' top-1 % scores gave 0.48-0.52 (docs/heatmaps.md). None for banks built without it.
        """
        if self.image_features is None:
            return None
        q = l2_normalise(np.asarray(cls, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self.card.dim:
            raise BankError(f"CLS token of dim {q.shape[1]} does not match bank dim {self.card.dim}")
        sims = np.sort(self.image_features @ q[0])[::-1][: max(1, min(k, len(self.image_features)))]
        return float(1.0 - sims.mean())

    def _matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """The (D, N) bank in ``dtype``, made once per dtype."""
        if dtype not in self._matrices:
            self._matrices[dtype] = torch.from_numpy(self.features).to(dtype).T.contiguous()
        return self._matrices[dtype]

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bank folder atomically (build aside, fsync, swap in); returns the folder."""
        target = Path(path).resolve()
        if target.exists() and not target.is_dir():
            raise BankError(f"cannot write a bank to {target}: it exists and is not a folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, self.features.astype(self.card.dtype), allow_pickle=False)
        data = buf.getvalue()
        self.card.features_sha256 = hashlib.sha256(data).hexdigest()
        payloads = [(BANK_FEATURES, data)]
        if self.image_features is not None:
            ibuf = io.BytesIO()
            np.save(ibuf, self.image_features.astype(self.card.dtype), allow_pickle=False)
            payloads.append((BANK_IMAGES, ibuf.getvalue()))
            self.card.image_features_sha256 = hashlib.sha256(ibuf.getvalue()).hexdigest()
        card_text = json.dumps(self.card.to_dict(), indent=2) + "\n"
        tmp = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
        tmp.mkdir()
        try:
            for name, payload in (*payloads, (BANK_CARD, card_text.encode())):
                with open(tmp / name, "wb") as fh:
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old-{secrets.token_hex(4)}")
                os.replace(target, old)
            os.replace(tmp, target)
            fsync_dir(target.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NormalBank:
        folder = Path(path)
        card_path, feat_path = folder / BANK_CARD, folder / BANK_FEATURES
        if not folder.is_dir():
            raise BankError(f"normal bank {folder} does not exist or is not a folder")
        if not card_path.is_file() or not feat_path.is_file():
            raise BankError(f"normal bank {folder} must hold {BANK_CARD} and {BANK_FEATURES}")
        try:
            card = BankCard.from_dict(json.loads(card_path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise BankError(f"unreadable bank card {card_path}: {exc}") from exc
        data = feat_path.read_bytes()
        if card.features_sha256 and hashlib.sha256(data).hexdigest() != card.features_sha256:
            raise BankError(f"{feat_path} does not match the checksum in its card (incomplete copy?)")
        feats = np.load(io.BytesIO(data), allow_pickle=False)
        images = None
        if card.n_image_features:
            img_path = folder / BANK_IMAGES
            if not img_path.is_file():
                raise BankError(f"normal bank {folder} lacks {BANK_IMAGES} that its card lists")
            raw = img_path.read_bytes()
            if card.image_features_sha256 and hashlib.sha256(raw).hexdigest() != card.image_features_sha256:
                raise BankError(f"{img_path} does not match the checksum in its card (incomplete copy?)")
            images = np.load(io.BytesIO(raw), allow_pickle=False)
        return cls(feats, card, images)

