"""Small MLP on standardised frozen features, trained with class-weighted cross-entropy.

For ordinal scales (``loss="ce+emd"``) a squared earth-mover term on the cumulative distribution is added:
predicting KL 1 for a KL 4 knee then costs more than predicting KL 3, while the output stays a softmax
that temperature scaling can calibrate. Training stops early on a patient-grouped held-out part of the
training labels, whose logits then calibrate the temperature.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from orthofm.evaluate.splits import group_holdout

from .base import FeatureHead, FitResult, Standardizer, balanced_class_weights

__all__ = ["MLPHead", "ordinal_emd_loss"]

log = logging.getLogger(__name__)


def ordinal_emd_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared distance between predicted and one-hot cumulative distributions (EMD^2, Hou et al. 2016)."""
    cdf = torch.softmax(logits, dim=1).cumsum(dim=1)
    target = (torch.arange(logits.shape[1], device=y.device)[None, :] >= y[:, None]).float()
    return ((cdf - target) ** 2).sum(dim=1).mean()


def _build(in_dim: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))


class MLPHead(FeatureHead):
    """One hidden layer (GELU, dropout), AdamW, early stopping on held-out NLL."""

    kind = "mlp"

    def __init__(self, n_classes: int, *, ordinal: bool = False, hidden: int = 256, dropout: float = 0.2,
                 lr: float = 1e-3, weight_decay: float = 1e-2, batch_size: int = 128, max_epochs: int = 300,
                 patience: int = 25, holdout: float = 0.2, loss: str | None = None, balanced: bool = True) -> None:
        super().__init__(n_classes, ordinal=ordinal)
        self.hidden, self.dropout, self.lr, self.weight_decay = int(hidden), float(dropout), float(lr), float(weight_decay)
        self.batch_size, self.max_epochs, self.patience = int(batch_size), int(max_epochs), int(patience)
        self.holdout, self.balanced = float(holdout), bool(balanced)
        self.loss = loss or ("ce+emd" if ordinal else "ce")
        if self.loss not in ("ce", "ce+emd"):
            raise ValueError(f"loss must be 'ce' or 'ce+emd', got {self.loss!r}")
        self.scaler: Standardizer | None = None
        self.net: nn.Sequential | None = None
        self.epochs: int | None = None

    def _criterion(self, weights: np.ndarray):
        ce = nn.CrossEntropyLoss(weight=torch.as_tensor(weights, dtype=torch.float32))

        def loss_fn(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            value = ce(z, t)
            return value + ordinal_emd_loss(z, t) if self.loss == "ce+emd" else value
        return loss_fn

    def fit(self, x: np.ndarray, y: np.ndarray, groups: list[str], *, seed: int = 0) -> FitResult:
        x, y = self.check_xy(x, y, groups)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.scaler = Standardizer.fit(x)
        xs = torch.as_tensor(self.scaler(x))
        if len(set(groups)) >= 3:
            fit_idx, hold_idx = group_holdout(y, groups, self.holdout, seed)
        else:
            fit_idx, hold_idx = np.arange(len(y)), np.zeros(0, dtype=np.int64)
        weights = balanced_class_weights(y[fit_idx], self.n_classes) if self.balanced else np.ones(self.n_classes)
        loss_fn = self._criterion(weights)
        net = _build(x.shape[1], self.hidden, self.n_classes, self.dropout)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        yt = torch.as_tensor(y)
        best = (math.inf, 0, {k: v.clone() for k, v in net.state_dict().items()})
        hold_ce = nn.CrossEntropyLoss()
        epoch = 0
        for epoch in range(1, self.max_epochs + 1):
            net.train()
            order = fit_idx[rng.permutation(len(fit_idx))]
            for s in range(0, len(order), self.batch_size):
                b = torch.as_tensor(order[s : s + self.batch_size])
                opt.zero_grad()
                loss_fn(net(xs[b]), yt[b]).backward()
                opt.step()
            if len(hold_idx) == 0:
                continue
            net.eval()
            with torch.no_grad():
                h = torch.as_tensor(hold_idx)
                value = float(hold_ce(net(xs[h]), yt[h]))
            if value < best[0] - 1e-4:
                best = (value, epoch, {k: v.clone() for k, v in net.state_dict().items()})
            elif epoch - best[1] >= self.patience:
                break
        if len(hold_idx):
            net.load_state_dict(best[2])
            self.epochs = best[1]
        else:
            self.epochs = epoch
        self.net = net.eval()
        log.info("mlp: %d epochs (best held-out NLL %.4f at epoch %s)", epoch, best[0], self.epochs)
        calib_logits = self.logits(x[hold_idx]) if len(hold_idx) else np.zeros((0, self.n_classes))
        return FitResult(logits=calib_logits, y=y[hold_idx],
                         info={"epochs": self.epochs, "held_out": len(hold_idx), "held_out_nll": best[0]
                               if len(hold_idx) else None, "loss": self.loss})

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        if self.net is None or self.scaler is None:
            raise RuntimeError("the MLP head is not fitted")
        return self.net(torch.as_tensor(self.scaler(x))).double().numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"mean": self.scaler.mean, "scale": self.scaler.scale}
        out.update({f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()})
        return out

    def params(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "dropout": self.dropout, "lr": self.lr, "weight_decay": self.weight_decay,
                "batch_size": self.batch_size, "max_epochs": self.max_epochs, "patience": self.patience,
                "holdout": self.holdout, "loss": self.loss, "balanced": self.balanced, "epochs": self.epochs}

    @classmethod
    def restore(cls, n_classes: int, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> MLPHead:
        kw = {k: params[k] for k in ("hidden", "dropout", "lr", "weight_decay", "batch_size", "max_epochs",
                                     "patience", "holdout", "loss", "balanced")}
        head = cls(n_classes, **kw)
        head.epochs = params.get("epochs")
        head.scaler = Standardizer(mean=arrays["mean"], scale=arrays["scale"])
        in_dim = arrays["mean"].shape[0]
        head.net = _build(in_dim, head.hidden, n_classes, head.dropout)
        head.net.load_state_dict({k[4:]: torch.as_tensor(v) for k, v in arrays.items() if k.startswith("net.")})
        head.net.eval()
        return head
