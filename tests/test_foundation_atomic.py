"""Crash-safe writes: a reader sees the old file or the complete new one, never a torn or missing one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from orthofm.utils import atomic
from orthofm.utils.atomic import atomic_path, atomic_write_bytes, atomic_write_text, temp_name_for


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_write_bytes_and_text_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "head.bin"
    assert atomic_write_bytes(target, b"\x00\x01payload") == target.resolve()
    assert target.read_bytes() == b"\x00\x01payload"
    atomic_write_text(target, "grade: KL3 – ok\n")
    assert target.read_text(encoding="utf-8") == "grade: KL3 – ok\n"
    atomic_write_bytes(target, memoryview(b"view"))
    assert target.read_bytes() == b"view"
    assert _leftovers(tmp_path) == []


def test_new_file_mode_follows_umask_and_existing_mode_is_kept(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    fresh = tmp_path / "fresh.txt"
    atomic_write_text(fresh, "x")
    assert fresh.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkstemp's 0600
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write_text(kept, "new")
    assert kept.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("name", ["knee.seg.nrrd", "scan.nii.gz", ".hidden", "noext", "a.b.c.json"])
def test_temp_name_is_hidden_sibling_with_the_full_suffix_chain(name: str) -> None:
    tmp = temp_name_for(Path("/x") / name)
    assert tmp.startswith(".") and ".tmp-" in tmp
    suffix = name.lstrip(".").partition(".")[2]
    assert tmp.endswith("." + suffix) if suffix else not tmp.endswith(".")
    assert temp_name_for(Path(name)) != temp_name_for(Path(name))


def test_atomic_path_works_with_real_writers_that_need_the_extension(tmp_path: Path) -> None:
    import nibabel as nib
    import nrrd

    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with atomic_path(tmp_path / "map.seg.nrrd") as tmp:
        assert tmp.parent == tmp_path.resolve() and tmp.name.endswith(".seg.nrrd")
        nrrd.write(str(tmp), data)
    read, _ = nrrd.read(str(tmp_path / "map.seg.nrrd"))
    np.testing.assert_array_equal(read, data)

    with atomic_path(tmp_path / "vol.nii.gz") as tmp:
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp))
    assert (tmp_path / "vol.nii.gz").read_bytes()[:2] == b"\x1f\x8b"  # really gzip-compressed
    np.testing.assert_array_equal(nib.load(str(tmp_path / "vol.nii.gz")).get_fdata(), data)
    assert _leftovers(tmp_path) == []


def test_error_inside_the_block_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "labels.json"
    target.write_text('{"old": true}')
    with pytest.raises(RuntimeError, match="writer crashed"), atomic_path(target) as tmp:
        tmp.write_text('{"new": tr')  # half written
        raise RuntimeError("writer crashed")
    assert target.read_text() == '{"old": true}'
    assert _leftovers(tmp_path) == []


def test_failing_replace_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "head.safetensors"
    target.write_bytes(b"old weights")

    def disk_gone(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", disk_gone)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new weights")
    assert target.read_bytes() == b"old weights"
    assert _leftovers(tmp_path) == []


def test_bad_arguments_raise_clear_errors_and_keep_old_file(tmp_path: Path) -> None:
    target = tmp_path / "t.txt"
    target.write_text("old")
    with pytest.raises(TypeError, match="needs bytes, got str"):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs str, got bytes"):
        atomic_write_text(target, b"not text")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "missing" / "t.txt", "x")
    with pytest.raises(IsADirectoryError):
        atomic_write_text(tmp_path, "x")
    assert _leftovers(tmp_path) == []


def test_writes_through_a_symlink_and_keeps_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_readers_never_see_a_torn_file_while_writers_race(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    size = 256 * 1024
    atomic_write_bytes(target, bytes([0]) * size)
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            if len(data) != size or data.count(data[:1]) != size:
                bad.append(f"torn read: {len(data)} bytes")

    def writer(value: int) -> None:
        for _ in range(25):
            atomic_write_bytes(target, bytes([value]) * size)

    threads = [threading.Thread(target=reader)] + [threading.Thread(target=writer, args=(v,)) for v in (1, 2)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert bad == []
    assert target.read_bytes() in (bytes([1]) * size, bytes([2]) * size)
    assert _leftovers(tmp_path) == []


def test_kill_minus_nine_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "datastore_v2.json"
    target.write_text('{"objects": {}}')
    child = (
        "import sys, time\n"
        "from orthofm.utils.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    fh = open(tmp, 'w'); fh.write('{\"objects\": {\"half'); fh.flush()\n"
        "    print('ready', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", child, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert target.read_text() == '{"objects": {}}'
    # a killed writer cannot clean up: its temp file is a hidden, recognisable sibling
    assert [n.startswith(".datastore_v2.tmp-") and n.endswith(".json") for n in _leftovers(tmp_path)] == [True]
