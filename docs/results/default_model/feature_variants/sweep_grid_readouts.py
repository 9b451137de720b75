"""Probe ``CLS + patch tokens pooled on an N x N grid`` from dump_grid_features.py's output, C by patient-grouped CV
on train over 1e-6..10 (val touched once per readout). ``python sweep_grid_readouts.py DIR orthofm_vits16 7,4,14``"""

import sys

import numpy as np
import torch
import torch.nn.functional as F

from orthofm.evaluate.metrics import classification_metrics
from orthofm.heads.calibration import softmax
from orthofm.heads.probe import LogisticProbe

folder, name, grids = sys.argv[1], sys.argv[2], [int(g) for g in sys.argv[3].split(",")]
cs = tuple(float(c) for c in np.logspace(-6, 1, 8))
tr, va = np.load(f"{folder}/{name}_train.npz"), np.load(f"{folder}/{name}_val.npz")


def readout(z: np.lib.npyio.NpzFile, grid: int) -> np.ndarray:
    x = z["cls_grid14"].astype(np.float32)
    cls, patches = x[:, :384], torch.from_numpy(x[:, 384:].reshape(len(x), 14, 14, 384)).permute(0, 3, 1, 2)
    return np.concatenate([cls, F.adaptive_avg_pool2d(patches, grid).flatten(1).numpy()], 1)


for g in grids:
    probe = LogisticProbe(5, ordinal=True, cs=cs)
    fit = probe.fit(readout(tr, g), tr["y"], list(tr["groups"]), seed=0)
    m = classification_metrics(va["y"], softmax(probe.logits(readout(va, g))), ordinal=True)
    print(f"{name} cls+grid{g}: C={probe.c:g} acc {m['accuracy']:.3f} qwk {m['qwk']:.3f} f1 {m['macro_f1']:.3f} "
          f"ece {m['ece']:.3f}", flush=True)
