"""KoLeo regulariser (Sablayrolles et al. 2019): spreads CLS embeddings uniformly by penalising
small nearest-neighbour distances within the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    def forward(self, features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        x = F.normalize(features.float(), dim=-1)
        sim = x @ x.t()
        sim.fill_diagonal_(-2.0)
        nearest = sim.argmax(dim=1)
        dist = torch.linalg.vector_norm(x - x[nearest], dim=-1)
        return -torch.log(dist + eps).mean()
