"""Training step time in bf16 autocast against float32, side by side: the numbers behind ``precision="auto"``.

Each row times one training step (forward, backward, AdamW update; batch 32 at 224 px, random input) of a
supervised baseline of the evaluation protocol, in bf16 autocast (``value``) and in float32 (``reference``),
interleaved, median of ``REPEATS`` after a warm-up step each. ``ratio`` < 1 means bf16 is faster on this CPU.
On CPUs with AVX512-BF16 or AMX it is (bf16 is native there); elsewhere bf16 is emulated and slower, which is
why baselines, fine-tuning and pretraining default to ``"auto"`` (``orthofm.utils.runtime.resolve_precision``)
instead of always using bf16. The notes say what ``"auto"`` picks here.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from orthofm.utils.runtime import configure_threads, has_native_bf16, resolve_precision

BATCH = 32
SIZE = 224
REPEATS = 3
MODELS = ("vit_random", "resnet18")
ARCH = "vit_small_patch16_dinov3_qkvb"


def _step_fn(name: str, bf16: bool) -> Callable[[], None]:
    from orthofm.evaluate.baselines import BASELINES, train_step

    torch.manual_seed(0)
    model = BASELINES[name](5, ARCH, SIZE).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(BATCH, SIZE, SIZE), torch.randint(0, 5, (BATCH,))

    return lambda: train_step(model, opt, x, lambda z: torch.nn.functional.cross_entropy(z, y), bf16)


def _timed(step: Callable[[], None]) -> float:
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


def run() -> list[dict]:
    threads = configure_threads()
    auto = resolve_precision("auto")
    rows = []
    for name in MODELS:
        steps = {bf16: _step_fn(name, bf16) for bf16 in (True, False)}
        for step in steps.values():
            step()  # warm-up: allocator, oneDNN kernel choice
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(REPEATS):
            for bf16, step in steps.items():
                times[bf16].append(_timed(step))
        bf16_s, fp32_s = statistics.median(times[True]), statistics.median(times[False])
        rows.append({
            "name": f"{name}_train_step_bf16_vs_fp32", "value": round(bf16_s, 3), "unit": "s",
            "reference": round(fp32_s, 3), "ratio": round(bf16_s / fp32_s, 3),
            "notes": f"baseline {name} ({ARCH if name == 'vit_random' else 'ResNet-18'}) train step, batch {BATCH}, "
                     f"{SIZE} px, AdamW; value = bf16 autocast, reference = float32; median of {REPEATS}, "
                     f"interleaved; native bf16 on this CPU: {has_native_bf16()}, so precision 'auto' runs {auto}; "
                     f"{threads} threads",
        })
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
