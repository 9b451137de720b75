"""Decode + preprocess throughput of ``orthofm.io`` beside the model's forward pass: is I/O ever the bottleneck?

Rows (``value`` in images/s, higher is better):
- ``io_<case>``: ``read_image`` + ``prepare_2d`` (224 px) per radiograph, or ``read_image`` of the whole
  24-slice knee MRI series + ``prepare_volume_slices`` of all 24 slices (value in slices/s);
  ``reference`` = ViT-S/16 ``forward_features`` throughput on the same number of 224 px inputs in bfloat16
  (batch 1 for a radiograph, batch 24 for the MRI); ``ratio`` = I/O rate / model rate, so > 1 means one
  decoding worker outpaces the model on this CPU (I/O is not the bottleneck), < 1 means it is.
- ``io_header_reject_bomb``: time to reject a PNG whose header claims 400 MP (header check only).
- ``io_write_mri_<map>_nrrd``: ``write_like`` of a float heatmap / uint8 mask on the MRI grid (NRRD,
  default encoding; ``reference`` = gzip level 1).
- ``io_resize_cr_1760_to_224``: ``resize_2d`` of the CR to the canvas (ms); ``reference`` = Pillow's resize
  (the implementation before).
- ``io_to_original_cr_1760_<map>``: ``PreparedImage.to_original`` of a model-resolution map back onto the
  1760x1760 CR (ms); ``reference`` = the same sampling done point by point with scipy's
  ``map_coordinates`` (the implementation before the separable one).
I/O and forward are timed in alternation (median of REPEATS) so load from other jobs hits both.
"""

from __future__ import annotations

import statistics
import struct
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from orthofm.io import ImageReadError, prepare_2d, prepare_volume_slices, read_image, write_like
from orthofm.utils.runtime import configure_threads

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
REPEATS = 5
ARCH = "vit_small_patch16_dinov3_qkvb"


def _cases() -> dict[str, tuple[object, int]]:
    """name -> (source, images per read)."""
    from pydicom.data import get_testdata_file

    cases: dict[str, tuple[object, int]] = {
        "cr_1760_uncompressed": (get_testdata_file("RG3_UNCR.dcm"), 1),
        "cr_1760_j2k_lossless": (get_testdata_file("RG3_J2KR.dcm"), 1),
        "cr_1760_j2k_lossy": (get_testdata_file("RG3_J2KI.dcm"), 1),
    }
    if SHARED.is_dir():
        cases["hip_331_j2k_rgb"] = (min((SHARED / "hip_xray").glob("*.dcm")), 1)
        cases["knee_png_224"] = (min((SHARED / "knee_kl" / "val" / "3").glob("*.png")), 1)
        cases["mri_series_24x512x512"] = (SHARED / "knee_mri_dess", 24)
    return cases


def _io_fn(source: object, n_images: int) -> Callable[[], None]:
    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record = read_image(source)
        if n_images > 1:
            prepare_volume_slices(record, size=224).tensors()
        else:
            prepare_2d(record.array, 224)

    return run


def _timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _bomb_png(path: Path) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00" * 64) + chunk(b"IEND", b""))
    return path


def run() -> list[dict]:
    threads = configure_threads()
    from orthofm.models import create_backbone

    torch.manual_seed(0)
    model = create_backbone(ARCH).eval().to(torch.bfloat16)
    rows: list[dict] = []
    for case, (source, n_images) in _cases().items():
        x = torch.randn(n_images, 3, 224, 224, dtype=torch.bfloat16)

        def forward(x: torch.Tensor = x) -> None:
            with torch.inference_mode():
                model.forward_features(x)

        io = _io_fn(source, n_images)
        io()  # warm-up: lazy imports, decoder plugins, allocator
        forward()
        io_s, fw_s = [], []
        for _ in range(REPEATS):
            io_s.append(_timed(io))
            fw_s.append(_timed(forward))
        io_rate = n_images / statistics.median(io_s)
        fw_rate = n_images / statistics.median(fw_s)
        unit = "slices/s" if n_images > 1 else "images/s"
        rows.append({
            "name": f"io_{case}",
            "value": round(io_rate, 2),
            "unit": unit,
            "reference": round(fw_rate, 2),
            "ratio": round(io_rate / fw_rate, 2),
            "notes": f"read_image + {'prepare_volume_slices (all slices)' if n_images > 1 else 'prepare_2d'} at "
                     f"224 px, one worker; reference = {ARCH} forward_features bf16, batch {n_images}; "
                     f"ratio > 1: I/O faster than the model; median of {REPEATS}, interleaved; {threads} threads",
        })  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        bomb = _bomb_png(Path(tmp) / "bomb.png")

        def reject() -> None:
            try:
                read_image(bomb)
            except ImageReadError:
                return
            raise AssertionError("bomb was not rejected")

        reject()
        t = statistics.median(_timed(reject) for _ in range(REPEATS * 4))
        rows.append({
            "name": "io_header_reject_bomb", "value": round(t * 1000, 3), "unit": "ms", "reference": None,
            "ratio": None, "notes": "PNG header claims 20000x20000 (400 MP > 100 MP limit): rejected from the IHDR, "
                                    "no decoding", "higher_is_better": False,
        })  # fmt: skip
    return rows + inverse_rows() + resize_rows() + write_rows()


def inverse_rows() -> list[dict]:
    """``to_original`` (separable) vs pointwise ``map_coordinates`` on the 1760 px CR, in ms."""
    from pydicom.data import get_testdata_file
    from scipy.ndimage import map_coordinates

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prep = prepare_2d(read_image(get_testdata_file("RG3_UNCR.dcm")).array, 224)
    g = prep.geometry
    rng = np.random.default_rng(0)
    rows = []
    for name, m, order in (("patch14_bilinear", rng.random((14, 14)).astype(np.float32), 1),
                           ("canvas224_bilinear", rng.random((224, 224)).astype(np.float32), 1),
                           ("labels224_nearest", rng.integers(0, 4, (224, 224)).astype(np.uint8), 0)):
        (mh, mw), (sh, sw), (h, w) = m.shape, g.canvas_shape, g.original_shape
        canvas = g.to_canvas(np.stack([np.arange(max(h, w))] * 2, 1).astype(float))
        coords = np.stack(np.meshgrid((canvas[:h, 0] + 0.5) * mh / sh - 0.5,
                                      (canvas[:w, 1] + 0.5) * mw / sw - 0.5, indexing="ij"))

        def pointwise(m: np.ndarray = m, order: int = order, coords: np.ndarray = coords) -> None:
            map_coordinates(m, coords, order=order, mode="nearest")

        def separable(m: np.ndarray = m, order: int = order) -> None:
            prep.to_original(m, order=order)

        pointwise()
        separable()
        t_new = statistics.median(_timed(separable) for _ in range(REPEATS * 2))
        t_old = statistics.median(_timed(pointwise) for _ in range(REPEATS))
        rows.append({
            "name": f"io_to_original_cr_1760_{name}", "value": round(t_new * 1000, 2), "unit": "ms",
            "reference": round(t_old * 1000, 1), "ratio": round(t_old / t_new, 1), "higher_is_better": False,
            "notes": f"to_original of a {mh}x{mw} map onto 1760x1760 (order {order}); reference = pointwise "
                     f"scipy map_coordinates (former implementation); ratio = speed-up; median",
        })  # fmt: skip
    return rows


def resize_rows() -> list[dict]:
    """``resize_2d`` (torch, antialiased bilinear) vs Pillow's BILINEAR resize of the same float image, in ms."""
    from PIL import Image
    from pydicom.data import get_testdata_file

    from orthofm.io.prepare import LetterboxGeometry, resize_2d

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        film = np.ascontiguousarray(read_image(get_testdata_file("RG3_UNCR.dcm")).array, dtype=np.float32)
    shape = LetterboxGeometry.fit(film.shape, 224).resized_shape

    def ours() -> None:
        resize_2d(film, shape)

    def pillow() -> None:
        np.asarray(Image.fromarray(film).resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)

    ours()
    pillow()
    t_new, t_old = [], []
    for _ in range(REPEATS * 2):  # interleaved
        t_new.append(_timed(ours))
        t_old.append(_timed(pillow))
    new, old = statistics.median(t_new), statistics.median(t_old)
    return [{
        "name": "io_resize_cr_1760_to_224", "value": round(new * 1000, 2), "unit": "ms",
        "reference": round(old * 1000, 2), "ratio": round(old / new, 2), "higher_is_better": False,
        "notes": "resize_2d (torch antialiased bilinear, read in place) of the 1760x1760 CR to 224 px; reference = "
                 "Pillow's BILINEAR on the same float image (copied into a Pillow image first; the former "
                 "implementation); ratio = speed-up; median, interleaved",
    }]  # fmt: skip


def write_rows() -> list[dict]:
    """``write_like`` of an MRI-sized float heatmap and mask as NRRD: default encoding vs gzip 1 and 9."""
    if not SHARED.is_dir():
        return []
    from scipy.ndimage import gaussian_filter

    from orthofm.io import robust_scale

    record = read_image(SHARED / "knee_mri_dess")
    heat = gaussian_filter(robust_scale(record.array), 4).astype(np.float32)  # smooth, like a real heatmap
    maps = {"heatmap": heat, "mask": (heat > 0.3).astype(np.uint8)}
    rows = []
    levels: tuple[int | None, ...] = (None, 0, 1, 9)
    with tempfile.TemporaryDirectory() as tmp:
        for name, arr in maps.items():
            times: dict[int | None, list[float]] = {lv: [] for lv in levels}
            sizes: dict[int | None, int] = {}
            for _ in range(3):
                for level in levels:
                    out = Path(tmp) / f"{name}{level}.nrrd"
                    times[level].append(_timed(lambda a=arr, o=out, lv=level: write_like(a, record, o,
                                                                                        compression_level=lv)))
                    sizes[level] = out.stat().st_size
            t = {lv: statistics.median(times[lv]) for lv in levels}
            rows.append({
                "name": f"io_write_mri_{name}_nrrd", "value": round(t[None] * 1000, 1), "unit": "ms",
                "reference": round(t[1] * 1000, 1), "ratio": round(t[None] / t[1], 3), "higher_is_better": False,
                "notes": f"write_like {arr.dtype} {name} 24x512x512 as NRRD, atomic, default encoding "
                         f"({'raw' if arr.dtype.kind == 'f' else 'gzip 1'}) {sizes[None] / 1e6:.2f} MB; reference "
                         f"gzip level 1 {sizes[1] / 1e6:.2f} MB; raw {t[0] * 1000:.0f} ms {sizes[0] / 1e6:.2f} MB; "
                         f"gzip 9 {t[9] * 1000:.0f} ms {sizes[9] / 1e6:.2f} MB; median of 3",
            })  # fmt: skip
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
