"""A light segmentation decoder on frozen patch features, trained once enough label maps exist.

Two convolutions on the (h, w, D) patch grid (3x3 to a small hidden width, then 1x1 to the classes), logits
upsampled bilinearly to the model canvas and trained with cross-entropy against the canvas labels, padding
ignored. The backbone stays frozen, so training is seconds on cached features; the decoder is saved as
``decoder.safetensors`` + ``decoder.json`` (arrays only, never pickle).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orthofm.utils.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["DecoderConfig", "PatchDecoder", "load_decoder", "save_decoder", "train_decoder"]

log = logging.getLogger(__name__)
WEIGHTS = "decoder.safetensors"
CARD = "decoder.json"


@dataclass
class DecoderConfig:
    embed_dim: int
    values: tuple[int, ...]  # label value of each output channel (0 = background first)
    hidden: int = 64
    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    metrics: dict = field(default_factory=dict)


class PatchDecoder(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv2d(cfg.embed_dim, cfg.hidden, 3, padding=1)
        self.norm = nn.BatchNorm2d(cfg.hidden)
        self.out = nn.Conv2d(cfg.hidden, len(cfg.values), 1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) patch features -> (B, C, h, w) logits."""
        x = patches.permute(0, 3, 1, 2)
        return self.out(F.gelu(self.norm(self.conv(x))))

    @torch.inference_mode()
    def probs(self, patches: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
        """(h, w, D) -> (C, S, S) class probabilities on the canvas."""
        self.eval()
        logits = self(torch.as_tensor(np.asarray(patches, dtype=np.float32))[None])
        up = F.interpolate(logits, size=canvas, mode="bilinear", align_corners=False)
        return torch.softmax(up, dim=1)[0].numpy()


def train_decoder(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    cfg: DecoderConfig,
    val_fraction: float = 0.2,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[PatchDecoder, dict]:
    """``samples``: (patch features (h, w, D), canvas class index (S, S) int, canvas valid (S, S) bool).

    Returns the decoder and metrics (train loss, validation Dice per class on held-out samples when >= 5)."""
    if not samples:
        raise ValueError("no label maps to train the decoder on")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(samples))
    n_val = round(len(samples) * val_fraction) if len(samples) >= 5 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    feats = torch.as_tensor(np.stack([np.asarray(s[0], dtype=np.float32) for s in samples]))
    target = torch.as_tensor(np.stack([np.asarray(s[1], dtype=np.int64) for s in samples]))
    valid = torch.as_tensor(np.stack([np.asarray(s[2], dtype=bool) for s in samples]))
    target = torch.where(valid, target, torch.full_like(target, -100))
    model = PatchDecoder(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    counts = torch.bincount(target[train_idx][target[train_idx] >= 0].flatten(), minlength=len(cfg.values)).float()
    weight = (counts.sum() / counts.clamp(min=1)).clamp(max=50) if counts.sum() else None
    canvas = tuple(target.shape[-2:])
    t0, loss_v = time.perf_counter(), float("nan")
    batch = 8
    for epoch in range(cfg.epochs):
        model.train()
        perm = train_idx[rng.permutation(len(train_idx))]
        total = 0.0
        for s in range(0, len(perm), batch):
            b = torch.as_tensor(perm[s:s + batch])
            logits = F.interpolate(model(feats[b]), size=canvas, mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, target[b], weight=weight, ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(b)
        loss_v = total / max(len(perm), 1)
        if progress is not None:
            progress(epoch + 1, loss_v)
    metrics = {"train_loss": round(loss_v, 4), "train_samples": len(train_idx), "val_samples": int(n_val),
               "seconds": round(time.perf_counter() - t0, 2)}
    if n_val:
        model.eval()
        with torch.inference_mode():
            logits = F.interpolate(model(feats[torch.as_tensor(val_idx)]), size=canvas, mode="bilinear",
                                   align_corners=False)
            pred = logits.argmax(1)
        tv = target[torch.as_tensor(val_idx)]
        ok = tv >= 0
        dice = {}
        for c, v in enumerate(cfg.values):
            if c == 0:
                continue
            p, t = (pred == c) & ok, (tv == c) & ok
            denom = int(p.sum() + t.sum())
            if denom:
                dice[str(v)] = round(2 * int((p & t).sum()) / denom, 4)
        metrics["val_dice"] = dice
    cfg.metrics = metrics
    return model.eval(), metrics


def save_decoder(model: PatchDecoder, folder: str | Path) -> Path:
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / WEIGHTS, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    card = asdict(model.cfg)
    card["values"] = list(model.cfg.values)
    atomic_write_text(folder / CARD, json.dumps(card, indent=2))
    return folder


def load_decoder(folder: str | Path) -> PatchDecoder:
    from safetensors.torch import load

    folder = Path(folder)
    card = json.loads((folder / CARD).read_text())
    card["values"] = tuple(card["values"])
    model = PatchDecoder(DecoderConfig(**card))
    model.load_state_dict(load((folder / WEIGHTS).read_bytes()))
    return model.eval()
