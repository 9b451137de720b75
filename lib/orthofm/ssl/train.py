"""The pretraining loop: one command on one CPU, one GPU or N GPUs under ``torchrun``.

Checkpoints are atomic and hold everything needed for an exact resume (weights, optimizer, loss
centres, every rank's RNG state, the step); schedules are pure functions of the step, so a run killed
with SIGKILL continues on the same loss trajectory from its last checkpoint. SIGTERM or Ctrl-C writes a
checkpoint at the current step first and then raises :class:`~orthofm.ssl.stopping.PretrainingStopped`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from orthofm.models import Backbone, PreprocessConfig, create_backbone
from orthofm.utils.runtime import resolve_precision

from .augment import augment_view
from .collapse import dino_uniform_collapse
from .config import PretrainConfig, save_config
from .data import DecodedImageCache, discover_sources
from .meta_arch import SSLMetaArch
from .progress_probe import PROBE_CSV, ProgressProbe, append_probe_row, probe_steps
from .stopping import PretrainingStopped, StopRequest, agree_any

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group when launched by ``torchrun`` (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


# -- schedules (pure functions of the step) ------------------------------------------------------
def cosine(step: int, total: int, start: float, end: float, warmup: int = 0, warmup_from: float = 0.0) -> float:
    if step < warmup:
        return warmup_from + (start - warmup_from) * step / max(warmup, 1)
    progress = min(1.0, (step - warmup) / max(total - warmup, 1))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * progress))


def resolution_at(config: PretrainConfig, step: int, total: int) -> int:
    fraction = step / max(total, 1)
    size = config.resolution_schedule[0][1]
    for start, value in config.resolution_schedule:
        if fraction >= start:
            size = value
    return int(size)


# -- batches -------------------------------------------------------------------------------------
def make_batch(
    cache: DecodedImageCache,
    indices: list[int],
    config: PretrainConfig,
    size: int,
    preprocess: PreprocessConfig,
) -> dict:
    """Augmented views for the enabled objectives: grey [0, 1] images replicated to 3 channels and
    normalised with the mean/std the backbone's weights expect (ImageNet for imported DINOv3 weights)."""
    mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)

    def stack(views: list[torch.Tensor]) -> torch.Tensor:
        return (torch.stack(views).expand(-1, 3, -1, -1) - mean) / std

    images = [cache.tensor(i) for i in indices]
    batch: dict = {}
    if "mae" in config.objective:
        batch["mae"] = stack([augment_view(img, size, config.augment) for img in images])
    if "dino" in config.objective:
        d = config.dino
        batch["global"] = [
            stack([augment_view(img, d.global_size, config.augment, d.global_scale) for img in images]) for _ in range(2)
        ]
        batch["local"] = [
            stack([augment_view(img, d.local_size, config.augment, d.local_scale) for img in images])
            for _ in range(d.local_crops)
        ]
    return batch


# -- checkpoints ---------------------------------------------------------------------------------
def _gather_rng(info: DistInfo) -> list[torch.Tensor]:
    state = torch.get_rng_state()
    if info.world == 1:
        return [state]
    states: list = [None] * info.world
    dist.all_gather_object(states, state)
    return states


def save_checkpoint(path: Path, meta: SSLMetaArch, optimizer: torch.optim.Optimizer, step: int,
                    rng: list[torch.Tensor], config: PretrainConfig) -> None:
    from orthofm.utils.atomic import atomic_path

    state = {
        "step": step,
        "model": meta.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng,
        "config": config.to_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _truncate_metrics(path: Path, step: int) -> None:
    """After a crash, drop logged rows the restored checkpoint has not reached yet."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)


# -- the loop ------------------------------------------------------------------------------------
def build_backbone(config: PretrainConfig) -> Backbone:
    from orthofm.models.backbone import ORTHOFM_MEAN, ORTHOFM_STD

    preprocess = PreprocessConfig(mean=ORTHOFM_MEAN, std=ORTHOFM_STD, input_size=224)
    decoder = config.decoder if "mae" in config.objective else None
    if config.init:
        from orthofm.models import load_backbone

        backbone = load_backbone(config.init)
        if decoder is not None and not backbone.has_mae_decoder:
            from orthofm.models.mae_decoder import MAEDecoder

            backbone.config.mae_decoder = decoder
            backbone.mae_decoder = MAEDecoder(decoder, backbone.embed_dim, backbone.patch_size)
        return backbone
    return create_backbone(config.arch, preprocess=preprocess, mae_decoder=decoder, drop_path_rate=config.drop_path_rate)


def pretrain(config: PretrainConfig) -> Path:
    """Run (or resume) pretraining; returns the output folder."""
    info = init_distributed()
    out = Path(config.out)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    torch.manual_seed(config.seed + info.rank)

    sources = discover_sources(config.data)
    if not sources:
        raise ValueError(f"no images found under {config.data}")
    cache_dir = config.cache_dir or str(out / "cache")
    if info.is_main:
        cache = DecodedImageCache(sources, config.max_side, cache_dir)
    if info.world > 1:
        dist.barrier()
    if not info.is_main:
        cache = DecodedImageCache(sources, config.max_side, cache_dir)

    meta = SSLMetaArch(config, build_backbone(config)).to(info.device)
    global_batch = config.batch_size * info.world
    steps_per_epoch = max(1, len(cache) // global_batch)
    total_steps = int(config.epochs * steps_per_epoch)
    lr = config.base_lr * global_batch / 256
    optimizer = torch.optim.AdamW(meta.param_groups(config.weight_decay), lr=lr, betas=(0.9, 0.95))

    step = 0
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        meta.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        rng = state["rng"]
        torch.set_rng_state(rng[info.rank] if info.rank < len(rng) else rng[0])
        if info.is_main:
            _truncate_metrics(out / METRICS, step)
            _truncate_metrics(out / PROBE_CSV, step)
            log.info("resumed from %s at step %d", ckpt_path, step)
    elif info.is_main:  # a run killed before its first checkpoint starts over: its logs (and their header) go too
        (out / METRICS).unlink(missing_ok=True)
        (out / PROBE_CSV).unlink(missing_ok=True)

    model = meta
    if info.world > 1:
        model = DistributedDataParallel(meta, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    precision = resolve_precision(config.precision, info.device)
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    warmup = int(config.warmup_epochs * steps_per_epoch)
    probing = bool(config.probe_train and config.probe_val)
    probe_every = probe_steps(config.probe_every_epochs, steps_per_epoch) if probing else 0
    # labelled sets read up front: a wrong folder fails now, not after the first epoch
    probe = ProgressProbe(config.probe_train, config.probe_val) if probing and info.is_main else None
    end_step = min(total_steps, config.max_steps) if config.max_steps > 0 else total_steps
    if info.is_main:
        log.info("pretraining %s (%s) on %d items: %d steps of %d images (%d per epoch), lr %.2e, %s",
                 config.arch, config.objective, len(cache), total_steps, global_batch, steps_per_epoch, lr, precision)

    meta.train()
    if probing and step == 0 and end_step > 0:  # the starting point: what a continuation has to beat
        if probe is not None:
            _run_probe(probe, meta, out, 0, steps_per_epoch)
        if info.world > 1:
            dist.barrier()
    with StopRequest() as stop:  # SIGTERM / Ctrl-C: checkpoint this step, then raise PretrainingStopped
        d = config.dino
        last_ckpt_time = time.time()
        tic, seen = time.time(), 0
        dino_history: list[float] = []
        collapse_warned = False
        while step < end_step:
            epoch, within = divmod(step, steps_per_epoch)
            perm = torch.randperm(len(cache), generator=torch.Generator().manual_seed(config.seed * 100003 + epoch))
            start = within * global_batch + info.rank * config.batch_size
            indices = perm[start : start + config.batch_size].tolist()
            size = resolution_at(config, step, total_steps)
            batch = make_batch(cache, indices, config, size, meta.student.preprocess)
            batch = {k: (v.to(info.device) if torch.is_tensor(v) else [t.to(info.device) for t in v])
                     for k, v in batch.items()}

            current_lr = cosine(step, total_steps, lr, lr * config.min_lr_ratio, warmup)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            teacher_temp = cosine(step, total_steps, d.teacher_temp_final, d.teacher_temp_final,
                                  int(d.teacher_temp_warmup_epochs * steps_per_epoch), d.teacher_temp)
            with autocast:
                losses = model(batch, teacher_temp)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(meta.parameters(), config.grad_clip)
            if meta.do_dino and step < int(d.freeze_last_layer_epochs * steps_per_epoch):
                for p in meta.student_head.last_layer.parameters():
                    p.grad = None  # AdamW skips a parameter without a gradient: no update, no weight decay
            optimizer.step()
            meta.update_teacher(_momentum(step, total_steps, d.momentum, d.momentum_final))
            step += 1
            seen += global_batch

            if info.is_main and (step % config.log_every_steps == 0 or step == end_step):
                # the rate of this log window: a pause (SIGSTOP, a busy machine) skews one window, not the rest of the run
                rate = seen / max(time.time() - tic, 1e-9)
                tic, seen = time.time(), 0
                eta = (end_step - step) * global_batch / max(rate, 1e-9)
                values = {k: float(v.detach()) for k, v in losses.items()}
                _append_metrics(out / METRICS, step, epoch, current_lr, size, rate, values)
                log.info("step %d/%d epoch %d size %d loss %.4f lr %.2e | %.1f img/s, ETA %s",
                         step, end_step, epoch, size, values["loss"], current_lr, rate, _fmt_eta(eta))
                if "dino" in values and step > warmup:
                    dino_history.append(values["dino"])
                    if not collapse_warned and dino_uniform_collapse(dino_history, d.out_dim):
                        collapse_warned = True
                        log.warning("the DINO loss has stayed at ln(%d) = %.3f for %d logs: the student's outputs are "
                                    "uniform (collapse), so DINO teaches nothing; see docs/pretraining.md, "
                                    "'DINO from MAE weights'",
                                    d.out_dim, math.log(d.out_dim), len(dino_history[-10:]))

            probe_due = probing and (step == end_step or (probe_every > 0 and step % probe_every == 0))
            if probe_due:
                if probe is not None:
                    _run_probe(probe, meta, out, step, steps_per_epoch)
                if info.world > 1:
                    dist.barrier()  # the other ranks wait for rank 0's probe
                tic, seen = time.time(), 0

            local_due = probe_due or step == end_step or (
                config.checkpoint_every_steps > 0 and step % config.checkpoint_every_steps == 0) or (
                config.checkpoint_every_steps <= 0
                and time.time() - last_ckpt_time > 60 * config.checkpoint_every_minutes)
            # one answer for all ranks: saving gathers every rank's RNG state, a collective every rank must enter
            if agree_any(local_due or stop.requested, info.world, info.device):
                rng = _gather_rng(info)
                if info.is_main:
                    save_checkpoint(ckpt_path, meta, optimizer, step, rng, config)
                    _plot_quietly(out)
                last_ckpt_time = time.time()
                if step < end_step and agree_any(stop.requested, info.world, info.device):
                    if info.is_main:
                        log.warning("stopped by a signal at step %d of %d; checkpoint written to %s, rerun the same "
                                    "command to resume", step, end_step, ckpt_path)
                    if info.world > 1:
                        dist.barrier()
                    raise PretrainingStopped(step, stop.signum or signal.SIGTERM)

    if info.world > 1:
        dist.barrier()
    return out


def _run_probe(probe: ProgressProbe, meta: SSLMetaArch, out: Path, step: int, steps_per_epoch: int) -> None:
    log.info("probe at step %d: embedding %d + %d labelled images", step, len(probe.train.paths), len(probe.val.paths))
    with torch.random.fork_rng(devices=[]):  # belt and braces: the probe must not move the run's RNG
        metrics = probe.run(meta.export_backbone(), out)
    append_probe_row(out / PROBE_CSV, step, step / steps_per_epoch, metrics)
    log.info("probe at step %d (epoch %.2f): val accuracy %.3f, QWK %.3f (%.0f s)", step, step / steps_per_epoch,
             metrics.get("accuracy", float("nan")), metrics.get("qwk", float("nan")), metrics["seconds"])


def _momentum(step: int, total: int, start: float, end: float) -> float:
    """Teacher EMA momentum: cosine from ``start`` to ``end`` over the run."""
    return end - (end - start) * (math.cos(math.pi * min(step, total) / max(total, 1)) + 1) / 2


def _append_metrics(path: Path, step: int, epoch: int, lr: float, size: int, rate: float, values: dict) -> None:
    keys = sorted(values)
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["step", "epoch", "lr", "size", "img_per_s", *keys])
        writer.writerow([step, epoch, f"{lr:.6g}", size, f"{rate:.2f}", *[f"{values[k]:.6f}" for k in keys]])


def _fmt_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m{seconds % 60:02d}s"


def _plot_quietly(out: Path) -> None:
    try:
        from .plots import plot_losses

        plot_losses(out / METRICS, out / "loss_curve.png", out / PROBE_CSV)
    except Exception as err:  # noqa: BLE001 - a plot must never stop a training run
        log.warning("could not plot losses: %s", err)
