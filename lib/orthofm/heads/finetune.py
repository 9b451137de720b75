"""Parameter-efficient fine-tuning: train the last N transformer blocks (+ final norm) and a linear head.

For when frozen features are not enough. The first ``L - N`` blocks stay frozen, so their output tokens
are computed once per image and cached (bf16 in memory); each epoch then only runs the last N blocks,
which makes fine-tuning on a 2-core CPU a matter of minutes rather than hours. The price: no image-level
augmentation (the cached tokens are fixed), so early stopping on a patient-grouped held-out part of the
training labels does the regularising. That held-out part also calibrates the temperature.

The saved head carries the N fine-tuned blocks (``backbone.*`` arrays) and the linear layer; at prediction
time they are loaded into a copy of the base backbone (whose id the card records), so the embedding store
keys the fine-tuned features under their own backbone id.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from orthofm.evaluate.splits import group_holdout
from orthofm.models import Backbone
from orthofm.utils.runtime import resolve_precision

from .base import FeatureHead, FitResult, balanced_class_weights
from .embeddings import EmbeddingStore, read_pixels
from .features import pool_tokens
from .mlp import ordinal_emd_loss
from .runtime import autocast

__all__ = [
    "FinetuneConfig", "FinetuneHead", "apply_finetuned_blocks", "cached_prefix_tokens", "prefix_tokens", "train_finetune",
]

log = logging.getLogger(__name__)


def _eva(backbone: Backbone) -> nn.Module:
    m = getattr(backbone, "model", None)
    if m is None or not hasattr(m, "blocks") or getattr(m, "pos_embed", None) is not None:
        raise NotImplementedError(f"last-block fine-tuning supports timm DINOv3/Eva trunks with RoPE, not {backbone.arch}")
    return m


@torch.no_grad()
def prefix_tokens(backbone: Backbone, x: torch.Tensor, start: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Tokens entering block ``start`` (CLS, registers, patches) for a normalised batch, frozen weights."""
    m = _eva(backbone)
    t = m.patch_embed(x)
    b, h, w, d = t.shape
    t = t.reshape(b, h * w, d)
    rope = _rope(m, h, w)
    prefix = [tok.expand(b, -1, -1) for tok in (m.cls_token, m.reg_token) if tok is not None]
    t = m.norm_pre(torch.cat(prefix + [t], dim=1))
    for blk in m.blocks[:start]:
        t = blk(t, rope=rope)
    return t, (h, w)


def cached_prefix_tokens(
    backbone: Backbone, store: EmbeddingStore, paths: Sequence[Path], start: int, *, batch_size: int = 32,
    precision: str = "auto", progress: bool = False,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """``prefix_tokens`` of every image (prepared by ``store``), computed once and shared by every fine-tuning epoch.

    The forward runs in ``precision``; the tokens are kept in bf16 whatever it was: half the memory of float32
    (3,000 knees x 201 tokens x 384 = 0.46 GB), and they are only ever the input of the trained blocks.
    """
    dtype = torch.bfloat16 if resolve_precision(precision) == "bf16" else torch.float32
    chunks, grid = [], (0, 0)
    starts = range(0, len(paths), batch_size)
    for s in tqdm(starts, desc="prefix tokens", unit="batch", leave=False, disable=not progress):
        x = torch.stack([store.prepare(read_pixels(p).array) for p in paths[s : s + batch_size]])
        with torch.no_grad(), autocast(dtype):
            t, grid = prefix_tokens(backbone, x, start)
        chunks.append(t.to(torch.bfloat16))
    return torch.cat(chunks), grid


def _rope(m: nn.Module, h: int, w: int) -> torch.Tensor | None:
    if m.rope is None:
        return None
    was = m.rope.training
    m.rope.eval()  # no coordinate jitter: the cached prefix tokens were made without it
    try:
        return m.rope.get_embed(shape=(h, w))
    finally:
        m.rope.train(was)


def suffix_features(backbone: Backbone, tokens: torch.Tensor, start: int, grid: tuple[int, int]) -> torch.Tensor:
    """Run blocks ``start..`` + final norm on cached tokens -> pooled ``[CLS ; mean patch]`` features."""
    m = _eva(backbone)
    rope = _rope(m, *grid)
    t = tokens
    for blk in m.blocks[start:]:
        t = blk(t, rope=rope)
    t = m.norm(t)
    p = backbone.num_prefix_tokens
    return pool_tokens({"cls": t[:, 0], "patches": t[:, p:].reshape(t.shape[0], grid[0], grid[1], -1)})


def _trainable_names(backbone: Backbone, n_blocks: int) -> list[str]:
    m = _eva(backbone)
    total = len(m.blocks)
    if not 1 <= n_blocks <= total:
        raise ValueError(f"n_blocks must be in 1..{total}, got {n_blocks}")
    keep = tuple(f"model.blocks.{i}." for i in range(total - n_blocks, total)) + ("model.norm.",)
    return [n for n, _ in backbone.named_parameters() if n.startswith(keep)]


def apply_finetuned_blocks(backbone: Backbone, arrays: dict[str, np.ndarray]) -> Backbone:
    """A copy of ``backbone`` with the fine-tuned parameters (``backbone.<name>`` arrays) loaded."""
    tuned = copy.deepcopy(backbone)
    params = dict(tuned.named_parameters())
    with torch.no_grad():
        for key, value in arrays.items():
            if not key.startswith("backbone."):
                continue
            name = key[len("backbone."):]
            if name not in params or tuple(params[name].shape) != value.shape:
                raise ValueError(f"fine-tuned parameter {name!r} {value.shape} does not fit backbone {backbone.arch}")
            params[name].copy_(torch.as_tensor(value).to(params[name].dtype))
    return tuned.eval()


class FinetuneHead(FeatureHead):
    """Linear layer on features of the fine-tuned backbone; also carries the fine-tuned block weights."""

    kind = "finetune"

    def __init__(self, n_classes: int, *, ordinal: bool = False, n_blocks: int = 2) -> None:
        super().__init__(n_classes, ordinal=ordinal)
        self.n_blocks = int(n_blocks)
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self.block_arrays: dict[str, np.ndarray] = {}
        self.settings: dict[str, Any] = {}

    def fit(self, x: np.ndarray, y: np.ndarray, groups: list[str], *, seed: int = 0) -> FitResult:
        raise NotImplementedError("fine-tuning needs images, not features: use orthofm.heads.finetune.train_finetune")

    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.weight is None:
            raise RuntimeError("the fine-tuned head is not trained")
        return np.asarray(x, dtype=np.float64) @ self.weight.T.astype(np.float64) + self.bias.astype(np.float64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias, **self.block_arrays}

    def params(self) -> dict[str, Any]:
        return {"n_blocks": self.n_blocks, **self.settings}

    @classmethod
    def restore(cls, n_classes: int, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> FinetuneHead:
        head = cls(n_classes, n_blocks=params["n_blocks"])
        head.settings = {k: v for k, v in params.items() if k != "n_blocks"}
        head.weight, head.bias = arrays["weight"], arrays["bias"]
        head.block_arrays = {k: v for k, v in arrays.items() if k.startswith("backbone.")}
        return head

    def backbone_for(self, base: Backbone) -> Backbone:
        """The base backbone with this head's fine-tuned blocks loaded (a copy)."""
        return apply_finetuned_blocks(base, self.block_arrays)


@dataclass
class FinetuneConfig:
    """Settings for last-N-block fine-tuning (defaults measured to fit a 2-core CPU budget)."""

    n_blocks: int = 2
    lr_blocks: float = 5e-5
    lr_head: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 32
    max_epochs: int = 30
    patience: int = 5
    holdout: float = 0.2
    balanced: bool = True
    loss: str | None = None  # "ce" | "ce+emd" (default: ce+emd for ordinal tasks)
    precision: str = "auto"  # "auto" (bf16 where the CPU runs it natively, else fp32), "bf16" or "fp32"
    max_minutes: float | None = None
    # process CPU time (all threads): a budget that means the same on a busy and an idle machine
    max_cpu_minutes: float | None = None


def train_finetune(
    backbone: Backbone, tokens: torch.Tensor, grid: tuple[int, int], y: np.ndarray, groups: list[str],
    n_classes: int, *, ordinal: bool = False, config: FinetuneConfig | None = None, seed: int = 0,
) -> tuple[FinetuneHead, FitResult]:
    """Fine-tune on cached prefix tokens (``prefix_tokens(backbone, x, L - n_blocks)`` for every image).

    ``backbone`` itself is not modified: a copy is trained.
    """
    cfg = config or FinetuneConfig()
    y = np.asarray(y, dtype=np.int64)
    if len(tokens) != len(y) or len(y) != len(groups):
        raise ValueError(f"{len(tokens)} token sets, {len(y)} labels and {len(groups)} groups do not match")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = copy.deepcopy(backbone).train()
    names = set(_trainable_names(model, cfg.n_blocks))
    start = len(_eva(model).blocks) - cfg.n_blocks
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
    head = nn.Linear(2 * model.embed_dim, n_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    if len(set(groups)) >= 3:
        fit_idx, hold_idx = group_holdout(y, groups, cfg.holdout, seed)
    else:
        fit_idx, hold_idx = np.arange(len(y)), np.zeros(0, dtype=np.int64)
    weights = balanced_class_weights(y[fit_idx], n_classes) if cfg.balanced else np.ones(n_classes)
    ce = nn.CrossEntropyLoss(weight=torch.as_tensor(weights, dtype=torch.float32))
    loss_name = cfg.loss or ("ce+emd" if ordinal else "ce")
    opt = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if n in names], "lr": cfg.lr_blocks},
        {"params": head.parameters(), "lr": cfg.lr_head},
    ], weight_decay=cfg.weight_decay)
    yt = torch.as_tensor(y)
    bf16 = resolve_precision(cfg.precision) == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32

    def forward(idx: np.ndarray) -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype, enabled=bf16):
            feats = suffix_features(model, tokens[torch.as_tensor(idx)].to(dtype), start, grid)
        return head(feats.float())

    def evaluate(idx: np.ndarray) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            out = torch.cat([forward(idx[s : s + 128]) for s in range(0, len(idx), 128)])
        model.train()
        return out

    state = lambda: ({n: p.detach().clone() for n, p in model.named_parameters() if n in names},
                     {k: v.detach().clone() for k, v in head.state_dict().items()})
    best = (math.inf, 0, state())
    t0, cpu0 = time.perf_counter(), time.process_time()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc="fine-tune", unit="epoch", leave=False)
    epoch = 0
    stop_reason = f"max_epochs ({cfg.max_epochs})" if len(hold_idx) else "no held-out part: fixed epochs"
    for epoch in bar:
        order = fit_idx[rng.permutation(len(fit_idx))]
        for s in range(0, len(order), cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            opt.zero_grad()
            z = forward(b)
            loss = ce(z, yt[b]) + (ordinal_emd_loss(z, yt[b]) if loss_name == "ce+emd" else 0.0)
            loss.backward()
            opt.step()
        if len(hold_idx):
            value = float(nn.functional.cross_entropy(evaluate(hold_idx), yt[torch.as_tensor(hold_idx)]))
            bar.set_postfix(held_out_nll=f"{value:.3f}")
            if value < best[0] - 1e-4:
                best = (value, epoch, state())
            elif epoch - best[1] >= cfg.patience:
                stop_reason = f"early stopping (no held-out NLL gain for {cfg.patience} epochs)"
                break
        if cfg.max_minutes is not None and time.perf_counter() - t0 > 60 * cfg.max_minutes:
            stop_reason = f"time budget ({cfg.max_minutes:g} wall-min)"
            log.warning("fine-tune stopped by the %.1f min budget at epoch %d", cfg.max_minutes, epoch)
            break
        if cfg.max_cpu_minutes is not None and time.process_time() - cpu0 > 60 * cfg.max_cpu_minutes:
            stop_reason = f"CPU budget ({cfg.max_cpu_minutes:g} CPU-min)"
            log.warning("fine-tune stopped by the %.1f CPU-min budget at epoch %d", cfg.max_cpu_minutes, epoch)
            break
    bar.close()
    if len(hold_idx):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, v in best[2][0].items():
                params[n].copy_(v)
        head.load_state_dict(best[2][1])
    model.eval()
    out = FinetuneHead(n_classes, ordinal=ordinal, n_blocks=cfg.n_blocks)
    out.weight = head.weight.detach().numpy().astype(np.float32)
    out.bias = head.bias.detach().numpy().astype(np.float32)
    # float16 like the OrthoFM backbone files: half the size, and the head in memory already uses the stored values
    out.block_arrays = {f"backbone.{n}": p.detach().to(torch.float16).numpy()
                        for n, p in model.named_parameters() if n in names}
    out.settings = {k: v for k, v in asdict(cfg).items() if k != "n_blocks"}
    out.settings["precision"] = "bf16" if bf16 else "fp32"  # the one it trained in, not "auto"
    out.settings["epochs"] = best[1] if len(hold_idx) else epoch
    calib = evaluate(hold_idx).double().numpy() if len(hold_idx) else np.zeros((0, n_classes))
    info = {"epochs_run": epoch, "best_epoch": best[1], "held_out": len(hold_idx),
            "held_out_nll": best[0] if len(hold_idx) else None, "loss": loss_name,
            "stop_reason": stop_reason, "converged": stop_reason.startswith("early stopping"),
            "wall_seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
            "threads": torch.get_num_threads(), "precision": "bf16" if bf16 else "fp32"}
    log.info("fine-tune: %d epochs, best held-out NLL %.4f at %d", epoch, best[0], best[1])
    return out, FitResult(logits=calib, y=y[hold_idx], info=info)
