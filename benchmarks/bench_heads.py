"""Embedding throughput and head-training time.

Embedding rows: images/s of ``EmbeddingStore.embed_paths`` on real 224 px knee radiographs with an empty
cache (read + prepare + forward + write), in batches of 32 and one image at a time. ``reference`` is the
backbone's bare ``forward_features`` throughput on already prepared tensors at the same batch size, so
``ratio`` shows how much the store's I/O and bookkeeping cost. A cache-hit row shows the re-run speed.

Head rows: seconds to fit each head (with its internal model selection and calibration) on 1,000 and
10,000 embeddings. The features are synthetic (a 5-class Gaussian mixture of the backbone's feature
width, patients of two images each) because only ~3,800 labelled real images exist here; fitting time
depends on size and conditioning, not on where the vectors came from. ``reference`` is one plain sklearn
``LogisticRegression`` fit at C = 0.01 on the same features, so ``ratio`` is the cost of the model
selection (grouped 5-fold CV over the C grid) in single fits.

Baseline rows: process CPU-seconds of one training step (batch 32, the baselines' own precision: bf16 autocast
where the CPU runs bf16 natively, else float32; AdamW; forward, backward,
update) of the ResNet-18 baseline at 224 and 128 px, the numbers behind the ``cpu`` preset's image size and
budget (docs/heads.md, "The cpu preset"). CPU time, not wall time, because the evaluation budgets are CPU
time; run once with and once without ``OMP_WAIT_POLICY=PASSIVE`` to see what spinning OpenMP threads cost
on a loaded machine.

Backbone: the shipped default model (monailabel_app/model/orthofm_vits16) when present, else a randomly
initialised ViT-S/16 of the same architecture (same latency).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from orthofm.heads.embeddings import EmbeddingStore
from orthofm.heads.features import embed_batch
from orthofm.heads.train import fit_head
from orthofm.utils.runtime import configure_threads, resolve_precision

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "monailabel_app" / "model" / "orthofm_vits16"
SHARED = REPO.parent / "shared" / "data"
N_BATCH_IMAGES = 64
N_SINGLE_IMAGES = 8
HEAD_SIZES = (1000, 10000)
BASELINE_SIZES = (224, 128)
BASELINE_STEPS = 2
TRAIN_IMAGES = 3000  # knee KL training split: converts a step into CPU-minutes per epoch


def _backbone() -> tuple[torch.nn.Module, str]:
    from orthofm.models import create_backbone, load_backbone

    if (DEFAULT_MODEL / "model_card.json").is_file():
        return load_backbone(DEFAULT_MODEL), "default model"
    torch.manual_seed(0)
    return create_backbone("vit_small_patch16_dinov3_qkvb").eval(), "random-init ViT-S/16 (default model absent)"


def _forward_rate(store: EmbeddingStore, paths: list[Path], batch: int) -> float:
    """Bare forward throughput (images/s) on prepared tensors, after one warm-up batch."""
    from orthofm.heads.embeddings import read_pixels

    x = torch.stack([store.prepare(read_pixels(p).array) for p in paths[:batch]])
    embed_batch(store.backbone, x, store.dtype)
    t = time.perf_counter()
    embed_batch(store.backbone, x, store.dtype)
    return batch / (time.perf_counter() - t)


def _embedding_rows(bb: torch.nn.Module, source: str) -> list[dict]:
    paths = sorted((SHARED / "knee_kl" / "val").rglob("*.png"))
    if len(paths) < N_BATCH_IMAGES + N_SINGLE_IMAGES:
        raise FileNotFoundError(f"need {N_BATCH_IMAGES + N_SINGLE_IMAGES} knee PNGs under {SHARED}/knee_kl/val")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddingStore(tmp, bb, batch_size=32, progress=False)
        fwd = _forward_rate(store, paths, 32)
        batch_paths = paths[:N_BATCH_IMAGES]
        t = time.perf_counter()
        store.embed_paths(batch_paths)
        rate = len(batch_paths) / (time.perf_counter() - t)
        rows.append({"name": "embed images/s (batch 32, cold cache)", "value": rate, "unit": "img/s",
                     "reference": fwd, "ratio": rate / fwd,
                     "notes": f"{len(batch_paths)} real 224 px knees, {source}, {store.dtype}; reference = bare "
                              "forward on prepared tensors, batch 32"})
        serial = EmbeddingStore(Path(tmp) / "serial", bb, batch_size=32, progress=False, prefetch=False)
        serial_paths = paths[-N_BATCH_IMAGES:]  # other images: a cold cache for the serial loader too
        t = time.perf_counter()
        serial.embed_paths(serial_paths)
        rate_serial = len(serial_paths) / (time.perf_counter() - t)
        rows.append({"name": "embed images/s (batch 32, cold cache, no prefetch)", "value": rate_serial,
                     "unit": "img/s", "reference": rate, "ratio": rate_serial / rate,
                     "notes": "the same with reading and preparing one image after the other instead of in a "
                              "prefetch thread; reference = the default (prefetching) rate above"})
        t = time.perf_counter()
        store.embed_paths(batch_paths)
        hit = len(batch_paths) / (time.perf_counter() - t)
        rows.append({"name": "embed images/s (cache hit)", "value": hit, "unit": "img/s", "reference": rate,
                     "ratio": hit / rate, "notes": "same images again: sha256 + .npy read; reference = cold rate"})
        single = EmbeddingStore(Path(tmp) / "single", bb, batch_size=1, progress=False)
        fwd1 = _forward_rate(single, paths, 1)
        single_paths = paths[N_BATCH_IMAGES : N_BATCH_IMAGES + N_SINGLE_IMAGES]
        t = time.perf_counter()
        single.embed_paths(single_paths)
        rate1 = len(single_paths) / (time.perf_counter() - t)
        rows.append({"name": "embed images/s (single image, cold cache)", "value": rate1, "unit": "img/s",
                     "reference": fwd1, "ratio": rate1 / fwd1,
                     "notes": f"{len(single_paths)} images one at a time; reference = bare forward, batch 1"})
    return rows


def _prefetch_rows(bb: torch.nn.Module, n: int = 24) -> list[dict]:
    """Prefetching against serial loading where decoding costs about a forward: 1760 px CR DICOMs (distinct
    copies of pydicom-data's RG3_UNCR, one pixel changed each, so the content-keyed cache never hits)."""
    import pydicom
    import pydicom.data

    src = pydicom.dcmread(pydicom.data.get_testdata_file("RG3_UNCR.dcm"))
    rows, rates = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(2 * n + 8):
            ds = src.copy()
            arr = ds.pixel_array.copy()
            arr[0, i] += 1
            ds.PixelData = arr.tobytes()
            paths.append(Path(tmp) / f"cr{i}.dcm")
            ds.save_as(paths[-1])
        EmbeddingStore(Path(tmp) / "warm", bb, batch_size=8, progress=False).embed_paths(paths[:8])
        for name, flag, chunk in (("prefetch", True, paths[8 : 8 + n]), ("serial", False, paths[8 + n :])):
            store = EmbeddingStore(Path(tmp) / name, bb, batch_size=8, progress=False, prefetch=flag)
            t = time.perf_counter()
            store.embed_paths(chunk)
            rates[name] = len(chunk) / (time.perf_counter() - t)
    rows.append({"name": "embed images/s, 1760 px CR DICOM (batch 8, cold cache)", "value": rates["prefetch"],
                 "unit": "img/s", "reference": rates["serial"], "ratio": rates["prefetch"] / rates["serial"],
                 "notes": f"{n} distinct 1760x1760 CRs; reference = the same with prefetch=False (read and prepare "
                          "one after the other)"})
    return rows


def _synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.39, 0.18, 0.27, 0.13, 0.03])
    centres = rng.normal(0, 1, (5, dim)) * 0.6
    x = (centres[y] + rng.normal(0, 1, (n, dim))).astype(np.float32)
    groups = [f"p{i // 2}" for i in range(n)]
    return x, y, groups


def _head_rows(dim: int) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    rows = []
    classes = ["0", "1", "2", "3", "4"]
    for n in HEAD_SIZES:
        x, y, groups = _synthetic(n, dim)
        xs = (x - x.mean(0)) / x.std(0)
        t = time.perf_counter()
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore")
            LogisticRegression(C=0.01, max_iter=500).fit(xs.astype(np.float64), y)
        single_fit = time.perf_counter() - t
        for kind in ("probe", "knn", "mlp"):
            t = time.perf_counter()
            head = fit_head(x, y, groups, classes, kind=kind, ordinal=True)
            seconds = time.perf_counter() - t
            ref = single_fit if kind == "probe" else None
            rows.append({"name": f"train {kind} head, {n} embeddings", "value": seconds, "unit": "s",
                         "reference": ref, "ratio": None if ref is None else seconds / ref,
                         "notes": f"{dim}-d synthetic features, 5 classes; includes model selection "
                                  f"({_selection(head)}) and temperature scaling"
                                  + ("; reference = one sklearn fit at C=0.01" if ref else "")})
    return rows


def _selection(head) -> str:
    fit = head.card.fit
    if head.card.kind == "probe":
        return f"{fit.get('cv_folds')}-fold grouped CV over {len(fit.get('cs', []))} C values"
    if head.card.kind == "knn":
        return f"leave-one-patient-out over k in {sorted(fit.get('loo_accuracy', {}))}"
    return f"early stopping at epoch {fit.get('epochs')}"


def _baseline_step_cpu_seconds(size: int) -> tuple[float, float]:
    """(CPU-s, wall-s) of one ResNet-18 baseline training step on a random batch of 32, after a warm-up step."""
    import os

    from orthofm.evaluate.baselines import BASELINES, train_step

    torch.manual_seed(0)
    model = BASELINES["resnet18"](5, "vit_small_patch16_dinov3_qkvb", size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, size, size), torch.randint(0, 5, (32,))

    bf16 = resolve_precision("auto") == "bf16"

    def step() -> None:
        train_step(model, opt, x, lambda z: torch.nn.functional.cross_entropy(z, y), bf16)

    step()
    t, c = time.perf_counter(), os.times()
    for _ in range(BASELINE_STEPS):
        step()
    e = os.times()
    cpu = (e.user - c.user) + (e.system - c.system)
    return cpu / BASELINE_STEPS, (time.perf_counter() - t) / BASELINE_STEPS


def _baseline_rows() -> list[dict]:
    import os

    rows, ref = [], None
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    for size in BASELINE_SIZES:
        cpu, wall = _baseline_step_cpu_seconds(size)
        rows.append({"name": f"ResNet-18 baseline train step, {size} px", "value": cpu, "unit": "s",
                     "reference": ref, "ratio": None if ref is None else cpu / ref,
                     "notes": f"process CPU-s per batch of 32 ({resolve_precision('auto')}, AdamW), {torch.get_num_threads()} threads, "
                              f"OMP_WAIT_POLICY={policy}; wall {wall:.2f} s; ~{cpu * TRAIN_IMAGES / 32 / 60:.1f} "
                              f"CPU-min per epoch on {TRAIN_IMAGES} images"
                              + ("; reference = 224 px" if ref is not None else "")})
        ref = ref if ref is not None else cpu
    return rows


def run() -> list[dict]:
    configure_threads()
    bb, source = _backbone()
    return _embedding_rows(bb, source) + _prefetch_rows(bb) + _head_rows(2 * int(bb.embed_dim)) + _baseline_rows()


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:48s} {row['value']:10.3f} {row['unit']:6s} ratio={row['ratio']}  {row['notes']}")
