"""Dump the CLS + 14x14 patch-token features of a backbone (or of its random-init twin) and raw-pixel thumbnails of
knee_kl train/val, for the grid-readout sweep (sweep_grid_readouts.py). Run from the repository root:

    python docs/results/default_model/feature_variants/dump_grid_features.py monailabel_app/model/orthofm_vits16 DIR 1
    python docs/results/default_model/feature_variants/dump_grid_features.py random:monailabel_app/model/orthofm_vits16 DIR 1
"""

import sys
from pathlib import Path

import numpy as np
import torch

from orthofm.evaluate.backbone_probe import Readout, pixel_features, readout_features
from orthofm.heads.labels import load_labels
from orthofm.models import backbone_from_config, load_backbone

torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
weights, out = sys.argv[1], Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
tr = load_labels("../shared/data/knee_kl/train")
va = load_labels("../shared/data/knee_kl/val")
bb = load_backbone(weights.removeprefix("random:")).eval()
if weights.startswith("random:"):  # the same twin as orthofm probe-backbone's random_init row
    torch.manual_seed(0)
    bb = backbone_from_config(bb.config).eval()
name = ("random_" if weights.startswith("random:") else "") + Path(weights.removeprefix("random:")).name
for split, data in (("train", tr), ("val", va)):
    f = readout_features(bb, list(data.paths), [Readout.parse("cls+grid14")])
    np.savez(out / f"{name}_{split}.npz", y=data.y, groups=np.array(data.patients),
             cls_grid14=f["cls+grid14"].astype(np.float16))
if not weights.startswith("random:"):
    for size in (64, 96):
        np.savez(out / f"pixels{size}.npz", train=pixel_features(tr.paths, size), val=pixel_features(va.paths, size))
