"""Sinkhorn-Knopp teacher targets (the small-batch alternative to EMA centring): marginals, collapse, DDP."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from orthofm.ssl.losses import DINOLoss, IBOTPatchLoss, sinkhorn_knopp


def _cosines(b: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, 16, generator=g), dim=-1) @ F.normalize(torch.randn(k, 16, generator=g), dim=-1).t()


def test_targets_are_distributions_with_equal_prototype_shares() -> None:
    logits = _cosines(64, 16)
    q = sinkhorn_knopp(logits, 0.05, iterations=50)
    assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(q.sum(dim=0), torch.full((16,), 64 / 16), rtol=1e-3)
    q3 = sinkhorn_knopp(logits, 0.05)  # the default 3 iterations: rows exact, columns close
    assert torch.allclose(q3.sum(dim=1), torch.ones(64), atol=1e-5)
    assert (q3.sum(dim=0) / 4.0 - 1).abs().max() < 0.5
    assert q3.argmax(dim=1).eq(logits.argmax(dim=1)).float().mean() > 0.5  # still each sample's own preference


def test_a_collapsed_teacher_still_gives_spread_targets() -> None:
    """Every sample prefers prototype 0: a softmax target would teach that one prototype to all of them."""
    logits = _cosines(32, 8) * 0.1
    logits[:, 0] += 0.8
    soft = torch.softmax(logits / 0.04, dim=-1)
    assert soft[:, 0].mean() > 0.99
    q = sinkhorn_knopp(logits, 0.04)
    assert q[:, 0].mean() < 0.3 and q.sum(dim=0).max() < 32 / 8 * 2.5


def test_losses_with_sinkhorn_match_cross_entropy_by_hand() -> None:
    torch.manual_seed(0)
    s = [torch.randn(4, 6) for _ in range(3)]
    t = [_cosines(4, 6, seed=i) for i in range(2)]
    loss = DINOLoss(6, student_temp=0.1, centering="sinkhorn")
    targets = sinkhorn_knopp(torch.cat(t), 0.04).split(4)
    expected = sum((-(targets[ti] * torch.log_softmax(s[si] / 0.1, dim=-1)).sum(-1)).mean()
                   for ti in range(2) for si in range(3) if si != ti) / 4
    assert loss(s, t, teacher_temp=0.04).item() == pytest.approx(expected.item(), rel=1e-5)
    assert not loss.center.any()  # no EMA centre is kept

    student, teacher = torch.randn(2, 5, 6), torch.stack([_cosines(5, 6, seed=7), _cosines(5, 6, seed=8)])
    mask = torch.tensor([[True, True, False, False, False], [True, False, True, True, False]])
    ibot = IBOTPatchLoss(6, centering="sinkhorn")
    q = sinkhorn_knopp(teacher[mask], 0.04)
    per_patch = -(q * torch.log_softmax(student[mask] / 0.1, dim=-1)).sum(-1)
    expected_ibot = (per_patch[:2].mean() + per_patch[2:].mean()) / 2  # mean over each image's masked patches
    assert ibot(student, teacher, mask, teacher_temp=0.04).item() == pytest.approx(expected_ibot.item(), rel=1e-5)
    with pytest.raises(ValueError, match="centering"):
        DINOLoss(6, centering="median")


def test_two_processes_compute_the_targets_of_the_global_batch() -> None:
    script = Path(__file__).parent / "helpers" / "ddp_sinkhorn_check.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    assert json.loads(line[len("RESULT "):])["max_diff"] < 1e-5


def test_pretrain_runs_with_sinkhorn_centring(shared_data: Path, tmp_path: Path) -> None:
    from test_ssl_pretrain import _cli, _env, _few_images, _losses

    data = _few_images(shared_data, tmp_path, n=8)
    out = tmp_path / "run"
    extra = ["max_steps=2", "checkpoint_every_steps=2", "dino.centering=sinkhorn", "dino.ibot_weight=1.0"]
    done = subprocess.run(_cli(data, out, "mae+dino", extra), check=False, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    losses = _losses(out)
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) and v > 0 for v in losses.values())
    bad = subprocess.run(_cli(data, tmp_path / "bad", "dino", ["max_steps=1", "dino.centering=median"]), check=False,
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "dino.centering must be one of" in bad.stderr
    assert "decoded" not in bad.stderr  # refused before any image is read
