"""Supervised baselines trained here, on the same labels: a ResNet-18 from scratch and the ViT from random init.

A label-efficiency claim is only as good as its baseline: an under-trained baseline makes any foundation
model look label-efficient. So every baseline trains until early stopping on a patient-grouped held-out
part of its training labels says it has converged (or a stated budget ends it, which the result records as
*not converged*), and its compute is measured (process CPU time, i.e. summed over threads, and wall time).
Both train under bf16 autocast where the CPU runs bf16 natively (float32 elsewhere), with light augmentation
(flip, shift, contrast), a class-weighted loss, and the same temperature scaling on the held-out part as the heads.

Baselines do not depend on the backbone under test (only ``vit_random`` borrows its architecture), and
they are by far the most expensive runs of a report. ``BaselineCache`` therefore stores each finished run
under a key of everything it does depend on (data, settings, fraction, seed), so a report for a new
backbone reuses them instead of spending hours re-training identical models.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from orthofm.heads.base import balanced_class_weights
from orthofm.heads.calibration import fit_temperature, softmax
from orthofm.heads.embeddings import read_pixels
from orthofm.heads.features import pool_tokens
from orthofm.heads.mlp import ordinal_emd_loss
from orthofm.utils.atomic import atomic_path, atomic_write_text
from orthofm.utils.jsonable import json_default
from orthofm.utils.runtime import resolve_precision

from .splits import group_holdout

__all__ = [
    "BASELINES", "BUDGET_FIELDS", "BaselineCache", "BaselineConfig", "BaselineResult", "answers_for", "entry_answers_for",
    "load_image_tensors", "run_settings", "train_baseline", "train_step",
]

log = logging.getLogger(__name__)


@dataclass
class BaselineConfig:
    """Training settings; ``max_epochs`` / ``max_minutes`` / ``max_cpu_minutes`` are budgets, early stopping the rule.

    ``mean`` / ``std`` normalise the grey images. They are the baseline's own (equal to the default backbone's
    preprocessing), not the backbone's, so that a new backbone never changes a baseline's numbers or its cache key.
    ``max_cpu_minutes`` is process CPU time (all threads): unlike wall time it does not shrink when other jobs
    load the machine, so a budgeted run trains the same number of epochs on a busy or an idle machine.
    """

    image_size: int = 224
    batch_size: int = 32
    max_epochs: int = 100
    patience: int = 8
    holdout: float = 0.15
    lr_resnet: float = 1e-3
    lr_vit: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    max_minutes: float | None = None
    max_cpu_minutes: float | None = None
    precision: str = "auto"  # "auto" (bf16 where the CPU runs it natively, else fp32), "bf16" or "fp32"
    ordinal_loss: bool = True
    mean: float = 0.5
    std: float = 0.25

    def __post_init__(self) -> None:  # a typo fails before hours of training, not after
        resolve_precision(self.precision)


def run_settings(config: BaselineConfig) -> dict[str, Any]:
    """The settings a run's numbers depend on: no budgets, and the precision as the one it resolves to here.

    The precision goes in as the ``bf16`` flag that keys and resume fingerprints held before ``precision``
    existed, so a bf16 host keeps every cached run; an fp32 run is another run (its numbers differ slightly).
    """
    settings = {k: v for k, v in asdict(config).items() if k not in BUDGET_FIELDS and k != "precision"}
    settings["bf16"] = resolve_precision(config.precision) == "bf16"
    return settings


@dataclass
class BaselineResult:
    """Test probabilities + how training went (converged = stopped by patience, not by a budget)."""

    probs: np.ndarray
    epochs_run: int
    best_epoch: int
    converged: bool
    cpu_minutes: float
    wall_minutes: float
    threads: int
    temperature: float
    held_out: int
    best_held_out_nll: float
    stop_reason: str
    precision: str = "bf16"

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("probs")
        return d


def load_image_tensors(paths: Sequence[Path], size: int, mean: float, std: float,
                       progress: bool = True) -> torch.Tensor:
    """All images as one (N, S, S) float16 tensor, prepared like the backbone's input (grey channel)."""
    from orthofm.io import prepare_2d

    out = torch.empty((len(paths), size, size), dtype=torch.float16)
    for i, p in enumerate(tqdm(paths, desc="loading images", unit="img", disable=not progress, leave=False)):
        prep = prepare_2d(read_pixels(p).array, size=size, mean=(mean,) * 3, std=(std,) * 3)
        out[i] = torch.as_tensor(prep.tensor[0]).to(torch.float16)
    return out


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip, shift up to 1/16 of the size, contrast x[0.8, 1.2] and brightness +-0.2 (normalised)."""
    b, s = x.shape[0], x.shape[-1]
    flip = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flip[:, None, None], x.flip(-1), x)
    pad = max(1, s // 16)
    padded = nn.functional.pad(x[:, None], (pad, pad, pad, pad), mode="replicate")[:, 0]
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    x = torch.stack([padded[i, dy[i] : dy[i] + s, dx[i] : dx[i] + s] for i in range(b)])
    contrast = 0.8 + 0.4 * torch.rand(b, 1, 1, generator=gen)
    bright = 0.4 * torch.rand(b, 1, 1, generator=gen) - 0.2
    return x * contrast + bright


class _ResNet(nn.Module):
    """torchvision ResNet-18, random init, 1 input channel (grey radiographs)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.net = resnet18(weights=None, num_classes=n_classes)
        self.net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, None])


class _RandomViT(nn.Module):
    """The OrthoFM backbone architecture from random init + a linear head on ``[CLS ; mean patch]``."""

    def __init__(self, n_classes: int, arch: str, image_size: int) -> None:
        super().__init__()
        from orthofm.models import create_backbone

        self.backbone = create_backbone(arch, img_size=image_size)
        self.head = nn.Linear(2 * self.backbone.embed_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pool_tokens(self.backbone.forward_features(x[:, None].expand(-1, 3, -1, -1))))


BASELINES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": lambda n_classes, arch, image_size: _ResNet(n_classes),
    "vit_random": lambda n_classes, arch, image_size: _RandomViT(n_classes, arch, image_size),
}


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
               loss_fn: Callable[[torch.Tensor], torch.Tensor], bf16: bool) -> None:
    """One optimiser step on batch ``x``: forward (bf16 autocast when ``bf16``), ``loss_fn(float32 logits)``, update.

    The benchmarks time this very function, so their per-step numbers are the baselines' own."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        z = model(x).float()
    loss = loss_fn(z)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _predict(model: nn.Module, images: torch.Tensor, idx: np.ndarray, bs: int, bf16: bool) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(idx), bs):
            outs.append(model(images[torch.as_tensor(idx[s : s + bs])].float()).float())
    model.train()
    return torch.cat(outs).double().numpy() if outs else np.zeros((0, 0))


BUDGET_FIELDS = ("max_epochs", "max_minutes", "max_cpu_minutes")
RESUME_FORMAT = "orthofm-baseline-resume/1"


def _save_resume(path: Path, state: dict[str, Any]) -> None:
    """The whole training state after an epoch, written atomically (a kill mid-write keeps the previous one)."""
    with atomic_path(path) as tmp:
        torch.save({"format": RESUME_FORMAT, **state}, tmp)


def _load_resume(path: Path | None, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state of this very run (same data, settings, seed), or None: a foreign or unreadable file
    is ignored (and later overwritten) rather than silently mixed into another run."""
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means "start over", with a warning
        log.warning("ignoring unreadable baseline checkpoint %s: %s", path, exc)
        return None
    if state.get("format") != RESUME_FORMAT or state.get("fingerprint") != fingerprint:
        log.warning("ignoring baseline checkpoint %s: it belongs to another run", path)
        return None
    return state


def train_baseline(
    name: str, images: torch.Tensor, y: np.ndarray, groups: list[str], test_images: torch.Tensor,
    n_classes: int, *, arch: str = "vit_small_patch16_dinov3_qkvb", ordinal: bool = False,
    config: BaselineConfig | None = None, seed: int = 0, checkpoint: str | Path | None = None,
    on_epoch: Callable[[int], None] | None = None,
) -> BaselineResult:
    """Train baseline ``name`` on (images, y) with early stopping on a grouped held-out part; predict the test set.

    ``checkpoint``: a file that receives the full training state after every epoch and, when it exists, is
    resumed from (model, optimiser, schedulers, best weights, RNG streams and the compute spent so far), so a
    killed run, or one stopped by a budget and restarted with a larger budget, continues where it stopped with
    the same trajectory as an uninterrupted run. Budgets count the compute of all sessions together.
    ``on_epoch(epoch)`` is called after each epoch (the cache's lock heartbeat).
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(BASELINES)}")
    cfg = config or BaselineConfig()
    ckpt = Path(checkpoint) if checkpoint is not None else None
    y = np.asarray(y, dtype=np.int64)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = BASELINES[name](n_classes, arch, cfg.image_size)
    fit_idx, hold_idx = group_holdout(y, groups, cfg.holdout, seed)
    weights = torch.as_tensor(balanced_class_weights(y[fit_idx], n_classes), dtype=torch.float32)
    ce = nn.CrossEntropyLoss(weight=weights)
    lr = cfg.lr_resnet if name == "resnet18" else cfg.lr_vit
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(fit_idx) / cfg.batch_size))
    warmup = cfg.warmup_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / max(1, warmup)))
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.3, patience=max(1, cfg.patience // 3))
    yt = torch.as_tensor(y)
    best_nll, best_epoch, best_state = math.inf, 0, {k: v.clone() for k, v in model.state_dict().items()}
    settings = run_settings(cfg)
    bf16 = settings["bf16"]
    fingerprint = {"name": name, "arch": arch, "ordinal": bool(ordinal), "seed": int(seed), "settings": settings,
                   "n": len(y), "y": hashlib.sha256(y.tobytes()).hexdigest(), "n_classes": int(n_classes)}
    spent_cpu = spent_wall = 0.0
    start_epoch = 1
    state = _load_resume(ckpt, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        plateau.load_state_dict(state["plateau"])
        best_nll, best_epoch, best_state = state["best_nll"], state["best_epoch"], state["best_state"]
        rng.bit_generator.state = state["numpy_rng"]
        gen.set_state(state["torch_gen"])
        torch.set_rng_state(state["torch_rng"])
        spent_cpu, spent_wall = state["cpu_seconds"], state["wall_seconds"]
        start_epoch = int(state["epoch"]) + 1
        log.info("%s: resuming after epoch %d from %s (%.1f CPU-min spent before)", name, state["epoch"], ckpt,
                 spent_cpu / 60)
    t0, cpu0 = time.perf_counter(), time.process_time()

    def cpu_so_far() -> float:
        return spent_cpu + time.process_time() - cpu0

    def wall_so_far() -> float:
        return spent_wall + time.perf_counter() - t0

    def stop_reason_after(epoch: int) -> str | None:
        if epoch - best_epoch >= cfg.patience:
            return f"early stopping (no held-out NLL gain for {cfg.patience} epochs)"
        if cfg.max_minutes is not None and wall_so_far() > 60 * cfg.max_minutes:
            return f"time budget ({cfg.max_minutes:g} wall-min)"
        if cfg.max_cpu_minutes is not None and cpu_so_far() > 60 * cfg.max_cpu_minutes:
            return f"CPU budget ({cfg.max_cpu_minutes:g} CPU-min)"
        return None

    epoch = start_epoch - 1
    # a resumed run that had already stopped (killed before its result was stored) trains no further epoch
    stop_reason = stop_reason_after(epoch) if state is not None else None
    last_epoch = epoch if stop_reason is not None else cfg.max_epochs
    bar = tqdm(range(start_epoch, last_epoch + 1), desc=f"{name} ({len(fit_idx)} imgs)", unit="epoch",
               leave=False, initial=start_epoch - 1, total=cfg.max_epochs)
    model.train()
    for epoch in bar:
        order = fit_idx[rng.permutation(len(fit_idx))]
        for s in range(0, len(order), cfg.batch_size):
            b = order[s : s + cfg.batch_size]
            x = _augment(images[torch.as_tensor(b)].float(), gen)
            yb = yt[b]
            train_step(model, opt, x, lambda z, yb=yb: ce(z, yb) + (
                ordinal_emd_loss(z, yb) if ordinal and cfg.ordinal_loss else 0.0), bf16)
            sched.step()
        hold_logits = _predict(model, images, hold_idx, 2 * cfg.batch_size, bf16)
        nll = float(-np.mean(np.log(np.clip(softmax(hold_logits)[np.arange(len(hold_idx)), y[hold_idx]], 1e-12, 1))))
        plateau.step(nll)
        bar.set_postfix(held_out_nll=f"{nll:.3f}", best=best_epoch)
        log.info("%s epoch %d: held-out NLL %.4f (best %.4f at %d), %.1f CPU-min, %.1f wall-min so far", name, epoch,
                 nll, min(nll, best_nll), best_epoch if nll >= best_nll - 1e-4 else epoch,
                 cpu_so_far() / 60, wall_so_far() / 60)
        if nll < best_nll - 1e-4:
            best_nll, best_epoch = nll, epoch
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if ckpt is not None:
            _save_resume(ckpt, {
                "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "plateau": plateau.state_dict(), "best_nll": best_nll,
                "best_epoch": best_epoch, "best_state": best_state, "numpy_rng": rng.bit_generator.state,
                "torch_gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "cpu_seconds": cpu_so_far(),
                "wall_seconds": wall_so_far()})
        if on_epoch is not None:
            on_epoch(epoch)
        stop_reason = stop_reason_after(epoch)
        if stop_reason is not None:
            break
    bar.close()
    stop_reason = stop_reason or f"max_epochs ({cfg.max_epochs})"
    converged = stop_reason.startswith("early stopping")
    cpu_minutes, wall_minutes = cpu_so_far() / 60, wall_so_far() / 60
    model.load_state_dict(best_state)
    calibration = fit_temperature(_predict(model, images, hold_idx, 2 * cfg.batch_size, bf16), y[hold_idx])
    test_logits = _predict(model, test_images, np.arange(len(test_images)), 2 * cfg.batch_size, bf16)
    log.info("%s: %d epochs (best %d, %s), %.1f CPU-min, %.1f wall-min", name, epoch, best_epoch, stop_reason,
             cpu_minutes, wall_minutes)
    return BaselineResult(
        probs=softmax(test_logits, calibration.temperature), epochs_run=epoch, best_epoch=best_epoch,
        converged=converged, cpu_minutes=cpu_minutes, wall_minutes=wall_minutes,
        threads=torch.get_num_threads(), temperature=calibration.temperature, held_out=len(hold_idx),
        best_held_out_nll=best_nll, stop_reason=stop_reason, precision="bf16" if bf16 else "fp32",
    )


CACHE_FORMAT = "orthofm-baseline-run/1"


def baseline_key(method: str, fraction: float, seed: int, *, data: dict[str, Any], config: BaselineConfig,
                 arch: str, ordinal: bool) -> str:
    """Key of one baseline run: everything its numbers depend on, and nothing else.

    ``data`` fingerprints the training and test sets (image bytes, labels, patients, classes). The backbone
    under test is deliberately absent: only ``vit_random`` depends on its architecture name (not its weights),
    so a new backbone of the same architecture reuses every cached baseline. Budgets (``BUDGET_FIELDS``) are
    absent too: they only say when to give up, so a converged run stands for any budget, and a run a budget
    stopped is continued (from its checkpoint) when a larger budget asks for it (see ``answers_for``).
    """
    settings = run_settings(config)
    fields = {"format": CACHE_FORMAT, "method": method, "fraction": round(float(fraction), 6), "seed": int(seed),
              "data": data, "config": settings, "ordinal": bool(ordinal),
              "arch": arch if method == "vit_random" else None}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


def answers_for(converged: bool, trained_with: dict[str, Any], config: BaselineConfig) -> bool:
    """Does a stored run stand for a run under ``config``? Yes if it converged, or if every budget it was
    trained under was at least ``config``'s (None = no limit): more training than asked for is still an answer;
    less is not, and the run is continued instead."""
    if converged:
        return True
    for name in BUDGET_FIELDS:
        asked, had = getattr(config, name), trained_with.get(name)
        if had is not None and (asked is None or asked > had):
            return False
    return True


def entry_answers_for(entry: dict[str, Any], config: BaselineConfig) -> bool:
    """``answers_for`` on a ``BaselineCache`` entry."""
    training = entry.get("run", {}).get("training", {})
    return answers_for(bool(training.get("converged")), entry.get("fields", {}).get("config", {}), config)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


LOCK_STALE_SECONDS = 6 * 3600  # far longer than one epoch of any baseline here (minutes)


class BaselineCache:
    """Finished baseline runs on disk, one JSON per run: ``<root>/<method>/<key>.json`` (atomic writes).

    A run being trained holds ``<key>.lock`` (pid + host), touched after every epoch. Another report that needs
    the same run waits for it instead of training a duplicate for hours on a shared CPU; a lock left by a dead
    process, or silent for ``LOCK_STALE_SECONDS`` (a machine that went away), is taken over.
    While training, ``<key>.resume.pt`` holds its state after each epoch, so a killed run resumes; it is kept
    after a budget stop (a larger budget continues the run) and removed once the run has converged.
    """

    def __init__(self, root: str | Path, poll_seconds: float = 30.0) -> None:
        self.root = Path(root)
        self.poll_seconds = poll_seconds

    def path(self, method: str, key: str) -> Path:
        return self.root / method / f"{key}.json"

    def resume_path(self, method: str, key: str) -> Path:
        """Where the run's training state lives between epochs (and after a budget stop, to be continued)."""
        return self.root / method / f"{key}.resume.pt"

    def get(self, method: str, key: str) -> dict[str, Any] | None:
        """The cached entry (``run``, ``probs``, ``y_test``) or None; an unreadable entry counts as missing."""
        path = self.path(method, key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable baseline cache entry %s: %s", path, exc)
            return None
        if entry.get("format") != CACHE_FORMAT or entry.get("key") != key:
            log.warning("ignoring baseline cache entry %s: wrong format or key", path)
            return None
        return entry

    def put(self, method: str, key: str, run: dict[str, Any], probs: np.ndarray, y_test: np.ndarray,
            fields: dict[str, Any] | None = None) -> Path:
        path = self.path(method, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"format": CACHE_FORMAT, "key": key, "fields": fields or {}, "run": run,
                 "probs": np.asarray(probs, dtype=np.float64).round(6).tolist(),
                 "y_test": np.asarray(y_test).astype(int).tolist()}
        atomic_write_text(path, json.dumps(entry, default=json_default))
        return path

    def _try_lock(self, lock: Path) -> bool:
        lock.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, fh)
        return True

    def heartbeat(self, method: str, key: str) -> None:
        """Mark the run's lock as still in use (its trainer calls this after every epoch)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(method, key).with_suffix(".lock"))

    def _holder_alive(self, lock: Path) -> bool:
        """A lock is stale when its trainer has not beaten for ``LOCK_STALE_SECONDS`` (on any machine: a new
        machine may reuse the pid, and another machine's pid cannot be checked), or its pid is gone here."""
        try:
            info = json.loads(lock.read_text())
            age = time.time() - lock.stat().st_mtime
        except (OSError, ValueError):
            return True  # being written right now; look again at the next poll
        if age > LOCK_STALE_SECONDS:
            return False
        if info.get("host") != socket.gethostname():
            return True  # cannot check another machine's process: trust the lock until it goes quiet
        return pid_alive(int(info.get("pid", -1)))

    @contextlib.contextmanager
    def claim(self, method: str, key: str,
              accept: Callable[[dict[str, Any]], bool] = lambda entry: True) -> Iterator[dict[str, Any] | None]:
        """Yield the cached entry if present and ``accept``ed (after waiting for a live trainer of the same run),
        else None while holding the run's lock: the caller trains and ``put``s, then the lock is released."""
        lock = self.path(method, key).with_suffix(".lock")
        waited, last_log = 0.0, -math.inf
        while True:
            entry = self.get(method, key)
            if entry is not None and accept(entry):
                yield entry
                return
            if self._try_lock(lock):
                break
            if not self._holder_alive(lock):
                log.warning("taking over stale baseline lock %s", lock)
                lock.unlink(missing_ok=True)
                continue
            if waited - last_log >= 600:
                log.info("waiting for another process training %s (%s); %.0f min so far", method, lock, waited / 60)
                last_log = waited
            time.sleep(self.poll_seconds)
            waited += self.poll_seconds
        try:
            yield None
        finally:
            lock.unlink(missing_ok=True)
