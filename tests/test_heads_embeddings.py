"""Embedding store: keyed by content + backbone, cache hits return identical features without the backbone."""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from orthofm.heads.embeddings import EmbeddingStore, backbone_id, content_hash
from orthofm.heads.features import pool_tokens
from orthofm.models import PreprocessConfig, create_backbone

SIZE = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on the shared 2-core machine two threads under load were ~25x slower (measured)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_backbone(seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone("vit_tiny_patch16_dinov3_qkvb", img_size=SIZE,
                           preprocess=PreprocessConfig(input_size=SIZE)).eval()


@pytest.fixture(scope="module")
def bb():
    return tiny_backbone(0)


@pytest.fixture(scope="module")
def knees(shared_data):
    return sorted((shared_data / "knee_kl" / "val" / "2").glob("*.png"))[:6]


def test_features_are_cls_and_mean_patch(tmp_path, knees, bb) -> None:
    store = EmbeddingStore(tmp_path, bb, dtype=torch.float32, progress=False)
    feats = store.embed_paths(knees[:2])
    assert feats.shape == (2, 2 * bb.embed_dim) and feats.dtype == np.float32
    with torch.no_grad():
        x = torch.stack([store.prepare(np.asarray(Image.open(p), dtype=np.float32)) for p in knees[:2]])
        out = bb.forward_features(x)
    expected = torch.cat([out["cls"], out["patches"].mean(dim=(1, 2))], dim=1).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pool_tokens(out).numpy(), expected, rtol=1e-6)


def test_cache_hit_is_identical_and_skips_the_backbone(tmp_path, knees, bb) -> None:
    bb = copy.deepcopy(bb)
    store = EmbeddingStore(tmp_path, bb, progress=False)
    first = store.embed_paths(knees)
    assert store.stats.computed == len(knees) and store.stats.hits == 0
    assert len(list(store.folder.rglob("*.npy"))) == len(knees)

    def explode(x):
        raise AssertionError("backbone called on a cache hit")

    fresh = EmbeddingStore(tmp_path, bb, progress=False)  # a new process would see the same files
    bb.forward_features = explode  # type: ignore[method-assign]
    again = fresh.embed_paths(knees)
    assert np.array_equal(first, again)
    assert fresh.stats.hits == len(knees) and fresh.stats.computed == 0


def test_key_is_content_not_name(tmp_path, knees, bb) -> None:
    copy = tmp_path / "renamed.png"
    shutil.copy(knees[0], copy)
    assert content_hash(copy) == content_hash(knees[0])
    assert content_hash(knees[1]) != content_hash(knees[0])
    store = EmbeddingStore(tmp_path / "store", bb, progress=False)
    a = store.embed_paths([knees[0]])
    b = store.embed_paths([copy])
    assert np.array_equal(a, b) and store.stats.hits == 1


def test_other_weights_other_entries(tmp_path, knees, bb) -> None:
    a, b = bb, copy.deepcopy(bb)
    with torch.no_grad():
        b.model.norm.bias.add_(0.5)  # a change in one tensor
    assert backbone_id(a) != backbone_id(b)
    assert backbone_id(a) == backbone_id(copy.deepcopy(a))
    sa = EmbeddingStore(tmp_path, a, progress=False)
    sb = EmbeddingStore(tmp_path, b, progress=False)
    assert sa.folder != sb.folder
    assert not np.allclose(sa.embed_paths(knees[:1]), sb.embed_paths(knees[:1]), atol=1e-3)
    assert sb.stats.computed == 1


def test_corrupt_entry_is_recomputed(tmp_path, knees, bb) -> None:
    store = EmbeddingStore(tmp_path, bb, progress=False)
    ref = store.embed_paths(knees[:1])
    entry = next(store.folder.rglob("*.npy"))
    entry.write_bytes(b"torn")
    again = store.embed_paths(knees[:1])
    assert np.array_equal(ref, again) and store.stats.computed == 2


def test_mri_series_is_one_averaged_vector(tmp_path, shared_data, bb) -> None:
    series = shared_data / "knee_mri_dess"
    store = EmbeddingStore(tmp_path, bb, progress=False, max_volume_slices=4)
    vec = store.embed_paths([series])
    assert vec.shape == (1, 2 * 192) and np.all(np.isfinite(vec))
    files = sorted(series.glob("*.dcm"))
    assert content_hash(list(reversed(files))) == content_hash(series)  # order of the files does not matter


def test_precisions_are_cached_apart(tmp_path, knees, bb) -> None:
    """Forcing float32 (ORTHOFM_FORCE_FP32, the accuracy check) must not be served bf16 vectors from the cache."""
    bf16 = EmbeddingStore(tmp_path, bb, dtype=torch.bfloat16, progress=False)
    fp32 = EmbeddingStore(tmp_path, bb, dtype=torch.float32, progress=False)
    assert bf16.folder != fp32.folder
    a = bf16.embed_paths(knees[:2])
    b = fp32.embed_paths(knees[:2])
    assert fp32.stats.computed == 2 and fp32.stats.hits == 0
    assert not np.array_equal(a, b)
    np.testing.assert_allclose(a, b, rtol=0.1, atol=0.1)


def test_prefetch_keeps_order_bounds_lookahead_and_raises_in_place() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from orthofm.heads.embeddings import prefetch

    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        if i == 7:
            raise ValueError("bad image 7")
        return i * i

    with ThreadPoolExecutor(max_workers=1) as pool:
        gen = prefetch(pool, work, list(range(10)), ahead=3)
        got = [next(gen) for _ in range(4)]
        assert got == [0, 1, 4, 9]
        assert max(started) <= 3 + 3  # never more than `ahead` calls beyond what was consumed
        with pytest.raises(ValueError, match="bad image 7"):
            list(gen)
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert list(prefetch(pool, lambda i: -i, [], ahead=4)) == []
        assert list(prefetch(pool, lambda i: -i, [1, 2], ahead=0)) == [-1, -2]


def test_prefetched_batches_keep_order_and_compute_duplicates_once(tmp_path, knees, bb) -> None:
    twin = tmp_path / "twin.png"
    shutil.copyfile(knees[0], twin)
    items = [knees[0], knees[1], twin, knees[2], knees[0], knees[3]]
    store = EmbeddingStore(tmp_path / "a", bb, dtype=torch.float32, batch_size=2, progress=False)
    feats = store.embed_paths(items)
    one = EmbeddingStore(tmp_path / "b", bb, dtype=torch.float32, batch_size=1, progress=False)
    singles = np.stack([one.embed_paths([p])[0] for p in items])
    np.testing.assert_allclose(feats, singles, rtol=1e-4, atol=1e-5)
    assert np.array_equal(feats[0], feats[2]) and np.array_equal(feats[0], feats[4])
    assert len(list(store.folder.rglob("*.npy"))) == 4  # four distinct images computed and cached
