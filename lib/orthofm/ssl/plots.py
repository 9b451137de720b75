"""Loss curves of a pretraining run as a PNG (people look at pictures, not CSVs)."""

from __future__ import annotations

import csv
from pathlib import Path


def plot_losses(metrics_csv: str | Path, out_png: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    fixed = {"step", "epoch", "lr", "size", "img_per_s"}
    keys = [k for k in rows[0] if k not in fixed]
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in keys:
        axes[0].plot(steps, [float(r[key]) for r in rows], label=key)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].set_yscale("log")
    axes[0].legend()
    axes[0].set_title("pretraining losses")
    axes[1].plot(steps, [float(r["lr"]) for r in rows], color="tab:gray")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("learning rate")
    axes[1].set_title("schedule")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
