"""Which backbone made a bank: a readable id and a cheap content fingerprint of its weights.

A bank built with one backbone is meaningless with another (different feature spaces), and two
checkpoints of one architecture share the arch name, so the card stores a hash of the weights. Hashing a
ViT-L in full takes seconds; the fingerprint hashes every tensor's name, shape and a strided sample of at
most 4096 values, which any retraining or fine-tuning changes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

__all__ = ["backbone_fingerprint", "backbone_id"]


def backbone_id(backbone: torch.nn.Module) -> str:
    """A human-readable name: ``<weights folder or file> (<arch>)`` for loaded weights, else the arch."""
    arch = getattr(backbone, "arch", None) or type(backbone).__name__
    path = getattr(getattr(backbone, "weights_info", None), "path", None)
    return f"{Path(str(path)).name} ({arch})" if path else str(arch)


@torch.no_grad()
def backbone_fingerprint(backbone: torch.nn.Module, samples: int = 4096) -> str:
    """SHA-256 over (name, shape, strided value sample) of every parameter and buffer of the trunk."""
    h = hashlib.sha256()
    for name, tensor in sorted(backbone.state_dict().items()):
        if name.startswith("mae_decoder."):  # the decoder does not change the patch tokens
            continue
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(flat[::step][:samples].to(torch.float64).cpu().numpy().tobytes())
    return h.hexdigest()
