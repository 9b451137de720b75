"""Embedding store: each image's features computed once per backbone and cached on disk.

Key = sha256 of the image's bytes (of all files, for a series) + the backbone id (sha256 of its
architecture, preprocessing and weights) + the feature definition. Renaming or moving an image keeps its
cache entry; editing the image or changing the weights never returns a stale vector. Heads, the
label-efficiency protocol and the active-learning strategies all read features through this store.

Layout: ``<root>/<backbone id>/<feature definition>-vol<N>/<key[:2]>/<key>.npy`` (float32, one vector per file),
plus ``backbone.json`` describing the backbone. Entries are written to a temp file and ``os.replace``d, so
a reader never sees a torn vector; an unreadable entry counts as a miss and is recomputed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm.auto import tqdm

from orthofm.models import Backbone
from orthofm.utils.atomic import atomic_write_bytes

from .features import FEATURE_DEFINITION, embed_batch, feature_dim
from .runtime import inference_dtype

__all__ = [
    "EmbeddingStore", "ImageItem", "backbone_id", "content_hash", "embed_folder", "list_items", "read_pixels",
    "series_files",
]

log = logging.getLogger(__name__)

ImageItem = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
_CHUNK = 1 << 20


def series_files(item: ImageItem) -> list[Path]:
    """The files behind one image: a file, the files of a series folder, or an explicit list."""
    if isinstance(item, (str, os.PathLike)):
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise FileNotFoundError(f"series folder {str(p)!r} is empty")
            return files
        if not p.is_file():
            raise FileNotFoundError(f"image {str(p)!r} does not exist")
        return [p]
    files = [Path(f) for f in item]
    if not files:
        raise ValueError("an image given as a list of files needs at least one file")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"series files do not exist: {missing[:3]}")
    return sorted(files)


def read_pixels(item: ImageItem):
    """``orthofm.io.read_image`` for feature extraction: missing pixel spacing is irrelevant here, so not warned."""
    from orthofm.io import SpacingUnknownWarning, read_image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpacingUnknownWarning)
        return read_image(item if isinstance(item, (str, os.PathLike)) else [str(f) for f in item])


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def content_hash(item: ImageItem) -> str:
    """sha256 of a file's bytes; for a series, sha256 over its files' sorted hashes (order and names ignored)."""
    files = series_files(item)
    if len(files) == 1:
        return _file_sha256(files[0])
    h = hashlib.sha256(b"series:")
    for digest in sorted(_file_sha256(f) for f in files):
        h.update(digest.encode())
    return h.hexdigest()


def backbone_id(backbone: Backbone) -> str:
    """``<arch>-<16 hex>``: hash of architecture, input size, preprocessing and every weight tensor."""
    h = hashlib.sha256()
    pre = backbone.preprocess
    h.update(json.dumps({"arch": backbone.arch, "mean": list(pre.mean), "std": list(pre.std),
                         "input_size": int(pre.input_size)}, sort_keys=True).encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        if name.startswith("mae_decoder."):
            continue  # the decoder never touches features
        t = tensor.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{backbone.arch}-{h.hexdigest()[:16]}"


@dataclass
class StoreStats:
    """Counters for one store object (hits = vectors read from disk, computed = images run through the backbone)."""

    hits: int = 0
    computed: int = 0
    seconds: float = 0.0


class EmbeddingStore:
    """Disk cache of ``[CLS ; mean patch]`` features (see ``orthofm.heads.features``) for one backbone.

    ``dtype`` is the autocast precision (default: bf16 if the CPU supports it, else float32); vectors are
    always stored as float32. MRI volumes ((D,H,W) records) are embedded slice by slice over the central
    ``max_volume_slices`` slices and averaged.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        backbone: Backbone,
        *,
        dtype: torch.dtype | None = None,
        batch_size: int = 32,
        max_volume_slices: int = 16,
        progress: bool = True,
        prefetch: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.backbone = backbone.eval()
        self.dtype = inference_dtype() if dtype is None else dtype
        self.batch_size = int(batch_size)
        self.max_volume_slices = int(max_volume_slices)
        self.progress = progress
        self.prefetch = prefetch  # read and prepare ahead in a thread (False: one after the other, for benchmarks)
        self.backbone_id = backbone_id(backbone)
        self.dim = feature_dim(backbone)
        self.root = Path(root)
        # the volume setting and the precision change the features, so both are part of the folder name
        # (bf16, the default where the CPU has it, keeps the plain name of the caches written before)
        tag = f"{FEATURE_DEFINITION.replace('/', '-')}-vol{self.max_volume_slices}"
        if self.dtype != torch.bfloat16:
            tag += f"-{str(self.dtype).removeprefix('torch.')}"
        self.folder = self.root / self.backbone_id / tag
        self.folder.mkdir(parents=True, exist_ok=True)
        self._write_description()
        self.stats = StoreStats()

    # -- keys and entries -------------------------------------------------------------------------------
    def key(self, item: ImageItem) -> str:
        return content_hash(item)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector for ``key``, or None (missing or unreadable)."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            vec = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable embedding %s (%s); recomputing", path, exc)
            return None
        if vec.shape != (self.dim,):
            log.warning("ignoring embedding %s of shape %s (expected (%d,))", path, vec.shape, self.dim)
            return None
        return vec

    def put(self, key: str, vec: np.ndarray) -> None:
        vec = np.asarray(vec, dtype=np.float32)
        if vec.shape != (self.dim,):
            raise ValueError(f"embedding must have shape ({self.dim},), got {vec.shape}")
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, vec, allow_pickle=False)
        # unique temp file per write (threads of one server may embed the same image at once), then rename:
        # readers see the old entry or the whole new one
        atomic_write_bytes(path, buf.getvalue())

    def _write_description(self) -> None:
        desc = self.root / self.backbone_id / "backbone.json"
        if desc.exists():
            return
        payload = {"backbone_id": self.backbone_id, "arch": self.backbone.arch,
                   "preprocess": self.backbone.preprocess.to_dict(), "features": FEATURE_DEFINITION,
                   "feature_dim": self.dim}
        tmp = desc.with_name(f".backbone.json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, desc)

    # -- computing ------------------------------------------------------------------------------------
    def embed_paths(self, paths: Iterable[ImageItem]) -> np.ndarray:
        """(N, F) float32 features, read from the cache where present, computed (and cached) otherwise."""
        items = list(paths)
        keys = [self.key(item) for item in items]
        out = np.empty((len(items), self.dim), dtype=np.float32)
        todo: list[int] = []
        for i, key in enumerate(keys):
            vec = self.get(key)
            if vec is None:
                todo.append(i)
            else:
                out[i] = vec
        self.stats.hits += len(items) - len(todo)
        if todo:
            self._compute(items, keys, todo, out)
        return out

    def _compute(self, items: list[ImageItem], keys: list[str], todo: list[int], out: np.ndarray) -> None:
        start = time.perf_counter()
        pending: list[tuple[int, torch.Tensor]] = []  # 2D images waiting for a full batch
        bar = tqdm(total=len(todo), desc=f"embedding ({self.backbone.arch})", unit="img",
                   disable=not self.progress, leave=False)
        done: dict[str, np.ndarray] = {}  # identical files in one call are computed once
        first: dict[str, int] = {}
        for i in todo:
            first.setdefault(keys[i], i)
        unique = list(first.values())
        # reading and preparing the next images can overlap the current batch's forward pass (decoders, numpy
        # and the forward release the GIL); on 2 cores the gain measured within noise (docs/heads.md)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="orthofm-prefetch") as pool:
            sources = [items[i] for i in unique]
            loaded = prefetch(pool, self._load, sources, self.batch_size) if self.prefetch else map(self._load, sources)
            for i, (record, tensor) in zip(unique, loaded):
                if tensor is None:  # a volume: its slices are one batch of their own
                    out[i] = self.embed_volume(record.array)
                    done[keys[i]] = out[i]
                    self.put(keys[i], out[i])
                    bar.update(1)
                    continue
                pending.append((i, tensor))
                if len(pending) >= self.batch_size:
                    self._flush(pending, keys, out, done)
                    bar.update(len(pending))
                    pending = []
            if pending:
                self._flush(pending, keys, out, done)
                bar.update(len(pending))
        for i in todo:
            if i != first[keys[i]]:
                out[i] = done[keys[i]]
                bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - start
        self.stats.computed += len(todo)
        self.stats.seconds += elapsed
        log.info("embedded %d images in %.1f s (%.1f img/s) with %s", len(todo), elapsed,
                 len(todo) / max(elapsed, 1e-9), self.backbone_id)

    def _load(self, item: ImageItem) -> tuple[Any, torch.Tensor | None]:
        """Read one item and prepare it (None for a volume, which ``embed_volume`` prepares slice by slice)."""
        record = read_pixels(item)
        return record, None if record.is_volume else self.prepare(record.array)

    def _flush(self, pending: list[tuple[int, torch.Tensor]], keys: list[str], out: np.ndarray,
               done: dict[str, np.ndarray]) -> None:
        feats = embed_batch(self.backbone, torch.stack([t for _, t in pending]), self.dtype)
        for (i, _), vec in zip(pending, feats):
            out[i] = vec
            done[keys[i]] = vec
            self.put(keys[i], vec)

    def prepare(self, array2d: np.ndarray) -> torch.Tensor:
        """One 2D array -> the normalised (3, S, S) tensor this backbone expects."""
        from orthofm.io import prepare_2d

        pre = self.backbone.preprocess
        return torch.as_tensor(prepare_2d(array2d, size=pre.input_size, mean=pre.mean, std=pre.std).tensor)

    def embed_volume(self, volume: np.ndarray) -> np.ndarray:
        """Mean feature over the central ``max_volume_slices`` slices of a (D, H, W) volume."""
        depth = volume.shape[0]
        n = max(1, min(depth, self.max_volume_slices))
        first = (depth - n) // 2
        tensors = [self.prepare(volume[z]) for z in range(first, first + n)]
        feats = [embed_batch(self.backbone, torch.stack(tensors[s : s + self.batch_size]), self.dtype)
                 for s in range(0, n, self.batch_size)]
        return np.concatenate(feats).mean(axis=0).astype(np.float32)

    def embed_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Features of in-memory 2D arrays / 3D volumes (not cached: there is no file to key them by)."""
        out = np.empty((len(arrays), self.dim), dtype=np.float32)
        flat = [(i, a) for i, a in enumerate(arrays) if np.asarray(a).ndim == 2]
        for i, a in enumerate(arrays):
            if np.asarray(a).ndim == 3:
                out[i] = self.embed_volume(np.asarray(a))
            elif np.asarray(a).ndim != 2:
                raise ValueError(f"array {i} has {np.asarray(a).ndim} dimensions; expected 2 (image) or 3 (volume)")
        for s in range(0, len(flat), self.batch_size):
            chunk = flat[s : s + self.batch_size]
            feats = embed_batch(self.backbone, torch.stack([self.prepare(a) for _, a in chunk]), self.dtype)
            for (i, _), vec in zip(chunk, feats):
                out[i] = vec
        return out


def list_items(images: str | os.PathLike[str], *, series: bool = False) -> list[ImageItem]:
    """Images below a folder: every image file, or with ``series`` every sub-folder as one DICOM series."""
    from .labels import list_images

    root = Path(images)
    if series:
        if not root.is_dir():
            raise FileNotFoundError(f"series folder {str(root)!r} does not exist")
        items: list[ImageItem] = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    else:
        items = list(list_images(root))
    if not items:
        raise FileNotFoundError(f"no {'series folders' if series else 'images'} found in {str(root)!r}")
    return items


def embed_folder(
    images: str | os.PathLike[str], weights: str | os.PathLike[str] | None, out: str | os.PathLike[str], *,
    batch_size: int = 32, series: bool = False, max_volume_slices: int = 16,
) -> tuple[EmbeddingStore, int]:
    """``orthofm embed``: fill the store at ``out`` for every image (or series) below ``images``.

    Also writes ``<store folder>/index.csv`` (path, key) so other tools can find the vector of a file.
    Returns the store and the number of images.
    """
    from orthofm.models import load_backbone
    from orthofm.utils.atomic import atomic_write_text

    from .runtime import default_model_dir

    items = list_items(images, series=series)
    backbone = load_backbone(weights or default_model_dir())
    store = EmbeddingStore(out, backbone, batch_size=batch_size, max_volume_slices=max_volume_slices)
    store.embed_paths(items)
    lines = ["path,key"] + [f"{Path(item)},{store.key(item)}" for item in items]  # type: ignore[arg-type]
    atomic_write_text(store.folder / "index.csv", "\n".join(lines) + "\n")
    return store, len(items)


_T = TypeVar("_T")
_R = TypeVar("_R")


def prefetch(pool: Executor, fn: Callable[[_T], _R], inputs: Sequence[_T], ahead: int) -> Iterator[_R]:
    """``map(fn, inputs)`` in order, with up to ``ahead`` calls running in ``pool`` before they are needed.

    An exception from ``fn`` is raised when its result is reached, as a plain ``map`` would."""
    queue: deque[Future] = deque()
    feed = iter(inputs)
    for item in feed:
        queue.append(pool.submit(fn, item))
        if len(queue) >= max(1, ahead):
            break
    while queue:
        result = queue.popleft().result()
        nxt = next(feed, _END)
        if nxt is not _END:
            queue.append(pool.submit(fn, nxt))
        yield result


_END = object()
