"""Which frozen feature of a backbone carries the KL signal? Per-layer CLS / mean-patch / grid-pooled probes.

Reproduces docs/results/default_model/feature_variants/README.md (session 3, stage-2 backbone):

    .venv/bin/python docs/results/default_model/feature_variants/feature_variants.py \
        --weights monailabel_app/model/orthofm_vits16 --out runs/feature_variants.npz

Features of blocks 4, 6, 8, 10, 12 (timm indices 3..11, final norm applied) are computed once in bf16 autocast
and saved; each variant is then probed with the product's ``LogisticProbe`` (C by patient-grouped CV on
train, val touched once), exactly like ``orthofm probe-backbone``.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
import torch.nn.functional as F

LAYERS = (3, 5, 7, 9, 11)


def extract(weights: str, data: str, out: str) -> None:
    from orthofm.heads.embeddings import EmbeddingStore
    from orthofm.heads.labels import load_labels
    from orthofm.io import read_image
    from orthofm.models import load_backbone

    backbone = load_backbone(weights).eval()
    store = EmbeddingStore("/tmp/orthofm_feature_variants_unused", backbone)  # only for ``prepare``
    res: dict[str, np.ndarray] = {}
    for split in ("train", "val"):
        labels = load_labels(f"{data}/{split}")
        feats: dict[str, list[torch.Tensor]] = {k: [] for k in ("cls", "mean", "g2")}
        paths = list(labels.paths)
        for s in range(0, len(paths), 32):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = torch.stack([store.prepare(read_image(p).array) for p in paths[s:s + 32]])
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                outs = backbone.forward_intermediates(x, list(LAYERS))
            feats["cls"].append(torch.stack([o["cls"].float() for o in outs], 1))
            feats["mean"].append(torch.stack([o["patches"].float().mean((1, 2)) for o in outs], 1))
            grids = [o["patches"].float().permute(0, 3, 1, 2) for o in outs]
            feats["g2"].append(torch.stack([F.adaptive_avg_pool2d(g, 2).flatten(1) for g in grids], 1))
        for k, v in feats.items():
            res[f"{split}_{k}"] = torch.cat(v).numpy()
        res[f"{split}_y"] = np.asarray(labels.y)
        res[f"{split}_patients"] = np.asarray(list(labels.patients)).astype(str)
    np.savez(out, **res)


def probe(path: str) -> None:
    from orthofm.evaluate.metrics import classification_metrics
    from orthofm.heads.calibration import softmax
    from orthofm.heads.probe import LogisticProbe

    d = np.load(path)
    ytr, yva, groups = d["train_y"], d["val_y"], list(d["train_patients"])

    def run(name: str, xtr: np.ndarray, xva: np.ndarray) -> None:
        head = LogisticProbe(5, ordinal=True)
        head.fit(xtr.reshape(len(xtr), -1), ytr, groups, seed=0)
        m = classification_metrics(yva, softmax(head.logits(xva.reshape(len(xva), -1))), ordinal=True)
        print(f"{name:24s} dim {xtr[0].size:5d}  C {head.c:g}  acc {m['accuracy']:.3f}  qwk {m['qwk']:.3f}", flush=True)

    for i, layer in enumerate(LAYERS):
        run(f"block {layer + 1} cls+mean", np.concatenate([d["train_cls"][:, i], d["train_mean"][:, i]], 1),
            np.concatenate([d["val_cls"][:, i], d["val_mean"][:, i]], 1))
    run("block 12 cls only", d["train_cls"][:, -1], d["val_cls"][:, -1])
    for i, layer in enumerate(LAYERS):
        run(f"block {layer + 1} 2x2 grid", d["train_g2"][:, i], d["val_g2"][:, i])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="monailabel_app/model/orthofm_vits16")
    parser.add_argument("--data", default="../shared/data/knee_kl")
    parser.add_argument("--out", default="runs/feature_variants.npz")
    parser.add_argument("--probe-only", action="store_true", help="reuse the saved features")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not args.probe_only:
        extract(args.weights, args.data, args.out)
    probe(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
