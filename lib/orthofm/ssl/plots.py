"""Loss curves of a pretraining run as a PNG (people look at pictures, not CSVs), with the progress probe's
val accuracy and QWK beside them when the run has a ``probe.csv``."""

from __future__ import annotations

import csv
from pathlib import Path


def _read(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot_losses(metrics_csv: str | Path, out_png: str | Path, probe_csv: str | Path | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read(Path(metrics_csv))
    if not rows:
        return
    probe = _read(Path(probe_csv)) if probe_csv else []
    fixed = {"step", "epoch", "lr", "size", "img_per_s"}
    keys = [k for k in rows[0] if k not in fixed]
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 3 if probe else 2, figsize=(16 if probe else 11, 4))
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
    if probe:
        probe_steps = [int(r["step"]) for r in probe]
        for key, label in (("accuracy", "val accuracy"), ("qwk", "val QWK")):
            axes[2].plot(probe_steps, [float(r[key]) for r in probe], marker="o", label=label)
        axes[2].set_xlabel("step")
        axes[2].set_ylabel("metric")
        axes[2].legend()
        axes[2].set_title("progress probe (frozen features)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
