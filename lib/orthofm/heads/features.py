"""The one definition of an image's feature vector, shared by the store, fine-tuning and prediction.

Feature = ``[CLS token ; mean of the patch tokens]`` of the last block (after the final norm), the
"linear input" of the DINOv2/v3 evaluation protocol: CLS carries the global summary the SSL objective
trains, the mean patch token adds the local texture (joint-space narrowing, osteophytes) that CLS can miss.
Register tokens are left out (they hold no image-specific content by design).
"""

from __future__ import annotations

import numpy as np
import torch

from orthofm.models import Backbone

from .runtime import forward_features

__all__ = ["FEATURE_DEFINITION", "embed_batch", "feature_dim", "pool_tokens"]

FEATURE_DEFINITION = "cls+meanpatch/v1"


def feature_dim(backbone: Backbone) -> int:
    return 2 * int(backbone.embed_dim)


def pool_tokens(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """``forward_features`` output -> (B, 2D) features ``[cls, mean(patches)]`` in float32."""
    cls = out["cls"].float()
    patches = out["patches"].float()
    return torch.cat([cls, patches.flatten(1, 2).mean(dim=1)], dim=1)


@torch.inference_mode()
def embed_batch(backbone: Backbone, x: torch.Tensor, dtype: torch.dtype | None = None) -> np.ndarray:
    """Features of a normalised (B, 3, S, S) batch as a float32 numpy array."""
    out = forward_features(backbone, x, dtype)
    return pool_tokens(out).cpu().numpy().astype(np.float32)
