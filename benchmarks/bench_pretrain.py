"""Pretraining throughput (images/s) of ViT-S/16 for each objective, bf16 autocast vs float32.

The float32 step of the same objective, timed in alternation with the bf16 step, is the reference, so
``ratio`` is the speed-up the bf16 path buys on this CPU. Plan epochs from these numbers
(docs/pretraining.md).
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch

from orthofm.ssl import SSLMetaArch, load_config
from orthofm.ssl.train import build_backbone
from orthofm.utils.runtime import configure_threads

BATCH = 16
REPEATS = 3

SETTINGS = {
    "mae_160": ["objective=mae", "resolution_schedule=[[0,160]]"],
    "mae_224": ["objective=mae", "resolution_schedule=[[0,224]]"],
    "dino_160_4x96": ["objective=dino", "dino.global_size=160", "dino.local_crops=4", "dino.local_size=96"],
}


def _batch(config, size: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    if config.objective == "mae":
        return {"mae": torch.randn(BATCH, 3, size, size, generator=gen)}
    d = config.dino
    return {
        "global": [torch.randn(BATCH, 3, d.global_size, d.global_size, generator=gen) for _ in range(2)],
        "local": [torch.randn(BATCH, 3, d.local_size, d.local_size, generator=gen) for _ in range(d.local_crops)],
    }


def _step_time(meta: SSLMetaArch, optimizer: torch.optim.Optimizer, batch: dict, bf16: bool) -> float:
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    start = time.perf_counter()
    with ctx:
        loss = meta(batch)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    meta.update_teacher(0.996)
    return time.perf_counter() - start


def run() -> list[dict]:
    threads = configure_threads()
    rows = []
    for name, overrides in SETTINGS.items():
        config = load_config(None, [*overrides, "dino.out_dim=4096"])
        meta = SSLMetaArch(config, build_backbone(config)).train()
        optimizer = torch.optim.AdamW(meta.parameters(), lr=1e-5)
        batch = _batch(config, config.resolution_schedule[0][1])
        _step_time(meta, optimizer, batch, True)  # warm-up both paths
        _step_time(meta, optimizer, batch, False)
        times = {True: [], False: []}
        for _ in range(REPEATS):
            for bf16 in (True, False):
                times[bf16].append(_step_time(meta, optimizer, batch, bf16))
        bf16_rate = BATCH / statistics.median(times[True])
        fp32_rate = BATCH / statistics.median(times[False])
        rows.append({
            "name": f"pretrain_vits16_{name}_bf16",
            "value": round(bf16_rate, 2),
            "unit": "img/s",
            "reference": round(fp32_rate, 2),
            "ratio": round(bf16_rate / fp32_rate, 2),
            "notes": f"train step (fwd+bwd+AdamW) batch {BATCH}, median of {REPEATS}; reference = fp32 step; "
                     f"{threads} threads",
        })  # fmt: skip
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
