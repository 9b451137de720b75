"""The same probe and C grid as sweep_grid_readouts.py on raw-pixel thumbnails. ``python sweep_pixels.py DIR 64,96``"""

import sys

import numpy as np

from orthofm.evaluate.metrics import classification_metrics
from orthofm.heads.calibration import softmax
from orthofm.heads.labels import load_labels
from orthofm.heads.probe import LogisticProbe

folder, sizes = sys.argv[1], sys.argv[2].split(",")
tr, va = load_labels("../shared/data/knee_kl/train"), load_labels("../shared/data/knee_kl/val")
cs = tuple(float(c) for c in np.logspace(-6, 1, 8))
for size in sizes:
    z = np.load(f"{folder}/pixels{size}.npz")
    probe = LogisticProbe(5, ordinal=True, cs=cs)
    probe.fit(z["train"], tr.y, list(tr.patients), seed=0)
    m = classification_metrics(va.y, softmax(probe.logits(z["val"])), ordinal=True)
    print(f"pixels{size}: C={probe.c:g} acc {m['accuracy']:.3f} qwk {m['qwk']:.3f} f1 {m['macro_f1']:.3f} "
          f"ece {m['ece']:.3f}", flush=True)
