"""Pretraining: losses, exact resume after SIGKILL, and 2-process DDP on CPU (real knee radiographs)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orthofm.ssl.config import DINOConfig
from orthofm.ssl.losses import DINOLoss, KoLeoLoss, mae_loss

TINY = [
    "arch=vit_tiny_patch16_dinov3_qkvb", "batch_size=4", "epochs=2", "log_every_steps=1",
    "resolution_schedule=[[0,64]]", "decoder.dim=32", "decoder.depth=1", "decoder.num_heads=2",
    "dino.global_size=64", "dino.local_size=32", "dino.local_crops=2", "dino.out_dim=128", "dino.hidden_dim=64",
    "dino.bottleneck_dim=32", "max_side=96", "warmup_epochs=0.5", "base_lr=0.01",
]


def _few_images(shared_data: Path, tmp_path: Path, n: int = 12) -> Path:
    """A small folder of real radiographs (symlinks into ../shared, never copies in the repo)."""
    folder = tmp_path / "images"
    folder.mkdir()
    files = sorted((shared_data / "knee_kl" / "val" / "0").glob("*.png"))[:n]
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def _cli(data: Path, out: Path, objective: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "orthofm.cli", "pretrain", "--data", str(data), "--out", str(out),
            "--objective", objective, "--set", *TINY, *extra]


def _losses(run: Path) -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as fh:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(fh)}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "ORTHOFM_NUM_THREADS": "1"}


def test_mae_loss_ignores_visible_patches() -> None:
    pred = torch.zeros(1, 4, 3)
    target = torch.tensor([[[1.0] * 3, [2.0] * 3, [100.0] * 3, [100.0] * 3]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert mae_loss(pred, target, mask).item() == pytest.approx((1 + 4) / 2)


def test_dino_loss_matches_cross_entropy_by_hand() -> None:
    torch.manual_seed(0)
    loss = DINOLoss(out_dim=5, student_temp=0.1)
    s = [torch.randn(3, 5) for _ in range(3)]
    t = [torch.randn(3, 5) for _ in range(2)]
    value = loss(s, t, teacher_temp=0.04)
    first_center = torch.cat(t).mean(0, keepdim=True)  # the centre starts at the first batch's mean, not at 0
    expected, pairs = 0.0, 0
    for ti in range(2):
        tp = torch.softmax((t[ti] - first_center) / 0.04, dim=-1)
        for si in range(3):
            if si != ti:
                expected += (-(tp * torch.log_softmax(s[si] / 0.1, dim=-1)).sum(-1)).mean()
                pairs += 1
    assert value.item() == pytest.approx((expected / pairs).item(), rel=1e-5)
    assert torch.allclose(loss.center, first_center, atol=1e-6)
    t2 = [torch.randn(3, 5) for _ in range(2)]
    loss(s, t2, teacher_temp=0.04)  # from then on an EMA with momentum 0.9
    assert torch.allclose(loss.center, 0.9 * first_center + 0.1 * torch.cat(t2).mean(0, keepdim=True), atol=1e-6)


def test_the_zero_centre_start_of_the_old_recipe_can_be_chosen() -> None:
    """``dino.center_start=zero`` reproduces runs made before the first-batch start (the committed stage 2)."""
    torch.manual_seed(0)
    s = [torch.randn(3, 5) for _ in range(3)]
    t = [torch.randn(3, 5) for _ in range(2)]
    old, new = DINOLoss(5, center_start="zero"), DINOLoss(5)
    old_value, new_value = old(s, t, teacher_temp=0.04), new(s, t, teacher_temp=0.04)
    expected, pairs = 0.0, 0
    for ti in range(2):  # an uncentred teacher on the first step
        tp = torch.softmax(t[ti] / 0.04, dim=-1)
        for si in range(3):
            if si != ti:
                expected += (-(tp * torch.log_softmax(s[si] / 0.1, dim=-1)).sum(-1)).mean()
                pairs += 1
    assert old_value.item() == pytest.approx((expected / pairs).item(), rel=1e-5)
    assert old_value.item() != pytest.approx(new_value.item(), rel=1e-3)
    assert torch.allclose(old.center, 0.1 * torch.cat(t).mean(0, keepdim=True), atol=1e-6)  # EMA from 0
    with pytest.raises(ValueError, match="center_start"):
        DINOConfig(center_start="last_batch")


def _last_layers(checkpoint: Path) -> tuple[torch.Tensor, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True)["model"]
    key = next(k for k in state if k.startswith("student_head.last_layer.") and k.endswith("original1"))
    return state[key], state[key.replace("student_head.", "teacher.head.")]


@pytest.mark.parametrize("freeze_epochs", [10, 0])
def test_prototypes_stay_fixed_during_the_freeze(shared_data: Path, tmp_path: Path, freeze_epochs: int) -> None:
    """DINO/iBOT/DINOv2 freeze the last layer early on; a frozen student layer keeps the teacher's (its EMA) equal."""
    data = _few_images(shared_data, tmp_path, n=8)
    out = tmp_path / "run"
    extra = ["max_steps=2", "checkpoint_every_steps=2", f"dino.freeze_last_layer_epochs={freeze_epochs}"]
    subprocess.run(_cli(data, out, "dino", extra), check=True, env=_env(), capture_output=True)
    student, teacher = _last_layers(out / "checkpoint.pt")
    gap = (student - teacher).abs().max().item()  # the EMA of two equal tensors differs only by rounding
    assert gap < 1e-6 if freeze_epochs else gap > 1e-4, gap


def test_koleo_penalises_close_pairs() -> None:
    spread = torch.eye(4)
    close = torch.tensor([[1.0, 0, 0, 0], [1.0, 0.01, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    assert KoLeoLoss()(close) > KoLeoLoss()(spread)


@pytest.mark.timeout(300)
def test_resume_after_sigkill_follows_same_loss_trajectory(shared_data: Path, tmp_path: Path) -> None:
    data = _few_images(shared_data, tmp_path)
    extra = ["checkpoint_every_steps=2"]
    reference = tmp_path / "reference"
    subprocess.run(_cli(data, reference, "mae+dino", extra), check=True, env=_env(), capture_output=True)
    expected = _losses(reference)
    assert len(expected) == 6  # 12 images / batch 4 = 3 steps per epoch, 2 epochs

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(data, run, "mae+dino", extra), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        ckpt = run / "checkpoint.pt"
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["step"] >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 2 <= killed_at < 6, "the kill should land mid-run"
    subprocess.run(_cli(data, run, "mae+dino", extra), check=True, env=_env(), capture_output=True)
    resumed = _losses(run)
    assert sorted(resumed) == sorted(expected)
    for step, value in expected.items():
        assert resumed[step] == pytest.approx(value, rel=1e-5, abs=1e-6), f"step {step} diverged after resume"
    assert (run / "loss_curve.png").stat().st_size > 0


@pytest.mark.timeout(330)
def test_two_process_ddp_keeps_ranks_identical(shared_data: Path, tmp_path: Path) -> None:
    data = _few_images(shared_data, tmp_path, n=16)
    script = Path(__file__).parent / "helpers" / "ddp_pretrain_check.py"
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(data), str(out), "mae+dino", *TINY, "max_steps=3", "checkpoint_every_steps=3"]
    done = subprocess.run(cmd, check=False, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (f"stdout: {done.stdout[-1000:]}\nstderr (head): {done.stderr[:1500]}\n"
                                  f"stderr (tail): {done.stderr[-1500:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["world"] == 2
    (d0, s0), (d1, s1) = result["digests"]
    assert s0 == s1 == 3
    assert d0 == d1, "ranks diverged: DDP did not synchronise gradients"


def test_uniform_collapse_detector() -> None:
    from orthofm.ssl.collapse import dino_uniform_collapse

    k = 4096
    # DINO losses logged by a real run continued from MAE weights (steps 170-260): pinned at ln(4096) = 8.318
    pinned = [8.3195, 8.3189, 8.3193, 8.3193, 8.3192, 8.3186, 8.3178, 8.3185, 8.3187, 8.3181]
    assert dino_uniform_collapse(pinned, k)
    learning = [8.30, 8.1, 7.8, 7.5, 7.2, 7.0, 6.8, 6.7, 6.5, 6.4]
    assert not dino_uniform_collapse(learning, k)
    assert not dino_uniform_collapse(pinned[:5], k), "too short a history must not warn"
    assert not dino_uniform_collapse(pinned, 65536), "ln(K) depends on the number of prototypes"


def _labelled(shared_data: Path, root: Path, split: str, per_class: int) -> Path:
    """A folder-per-class KL set of real knees (symlinks), ``per_class`` images of each grade."""
    for grade in range(5):
        folder = root / split / str(grade)
        folder.mkdir(parents=True)
        for f in sorted((shared_data / "knee_kl" / split / str(grade)).glob("*.png"))[:per_class]:
            (folder / f.name).symlink_to(f)
    return root / split


@pytest.mark.timeout(300)
def test_progress_probe_logs_frozen_feature_quality_without_moving_the_run(shared_data: Path, tmp_path: Path) -> None:
    data = _few_images(shared_data, tmp_path)
    train = _labelled(shared_data, tmp_path / "probe", "train", per_class=6)
    val = _labelled(shared_data, tmp_path / "probe", "val", per_class=3)
    plain, probed = tmp_path / "plain", tmp_path / "probed"
    subprocess.run(_cli(data, plain, "mae+dino", []), check=True, env=_env(), capture_output=True)
    extra = [f"probe_train={train}", f"probe_val={val}", "probe_every_epochs=1"]
    probed.mkdir()  # rows left by a run killed before its first checkpoint: the new run starts over without them
    (probed / "metrics.csv").write_text("step,epoch,lr,size,img_per_s,loss\n1,0,0.1,64,1.0,99.0\n")
    (probed / "probe.csv").write_text("step,epoch,accuracy,qwk,macro_f1,ece,seconds\n0,0,0.9,0.9,0.9,0.1,1\n")
    subprocess.run(_cli(data, probed, "mae+dino", extra), check=True, env=_env(), capture_output=True)

    with open(probed / "probe.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 3, 6]  # the start, then one per epoch (3 steps each)
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and -1.0 <= float(row["qwk"]) <= 1.0
        assert float(row["seconds"]) > 0
    assert rows[0]["accuracy"] != "nan"
    # the probe reads the run's backbone but never its RNG: the same losses step for step
    assert _losses(probed) == pytest.approx(_losses(plain), rel=1e-6)
    assert (probed / "loss_curve.png").stat().st_size > 0
    assert not [p for p in probed.iterdir() if p.name.startswith("probe-")], "the scratch feature store stays behind"


def test_progress_probe_needs_both_labelled_sets() -> None:
    from orthofm.ssl.config import PretrainConfig

    with pytest.raises(ValueError, match="probe_train and probe_val"):
        PretrainConfig(probe_train="somewhere")
    with pytest.raises(ValueError, match="probe_every_epochs"):
        PretrainConfig(probe_every_epochs=1.0)
