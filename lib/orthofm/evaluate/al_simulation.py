"""Active-learning replay on labelled data: does a strategy reach a given accuracy with fewer labels than random?

Protocol (the same for every strategy, several seeds):
1. Round 0: ``initial`` images are labelled. Strategies that need no model (typiclust, probcover, coreset) choose
   them themselves (that is their point in the cold start); random, uncertainty and hybrid start from the same
   random set of that seed, so the uncertainty ones are compared from identical footing with random.
2. A head (``orthofm.heads.fit_head``, logistic probe by default) is fitted on the labelled images' cached
   features; validation accuracy, macro-F1 and quadratic kappa are recorded for that number of labels.
3. The strategy picks the next ``per_round`` images from the unlabelled training pool (uncertainty-based ones
   use the current head's calibrated probabilities); their true labels are "acquired"; repeat.

The summary is honest by construction: per strategy it reports the mean difference to random at every
budget, the area under the learning curve, and how many budgets random was better, including when random wins.
Full runs take hours on a 2-core CPU; tests and the issue's "do not run at full scale" use small settings.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from orthofm.active import STRATEGIES, SelectionInput, prepare_features, select
from orthofm.utils.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["SimulationConfig", "load_kl_split", "plot_curves", "run_from_folders", "simulate", "summarize"]

log = logging.getLogger(__name__)
COLD_START_ITSELF = ("typiclust", "probcover", "coreset")


@dataclass
class SimulationConfig:
    strategies: tuple[str, ...] = STRATEGIES
    initial: int = 10
    per_round: int = 10
    rounds: int = 10
    seeds: tuple[int, ...] = (0, 1, 2)
    head_kind: str = "probe"
    max_pool: int | None = None  # subsample the training pool (per seed) for quick runs
    max_val: int | None = None  # subsample the validation set (once) for quick runs
    uncertainty_kind: str = "entropy"


@dataclass
class SimulationResult:
    rows: list[dict] = field(default_factory=list)  # strategy, seed, round, n_labels, metrics...
    config: dict = field(default_factory=dict)
    seconds: float = 0.0


def _fit_and_score(x_tr, y_tr, g_tr, x_val, y_val, classes, kind, seed):
    from orthofm.evaluate.metrics import classification_metrics
    from orthofm.heads import fit_head

    head = fit_head(x_tr, y_tr, g_tr, list(classes), kind=kind, ordinal=True, seed=seed)
    probs = head.predict_proba(x_val)
    m = classification_metrics(y_val, probs, ordinal=True, y_pred=head.decode(probs))
    return head, {k: float(m[k]) for k in ("accuracy", "macro_f1", "qwk") if k in m}


def simulate(
    x_train: np.ndarray, y_train: np.ndarray, groups: Sequence[str], x_val: np.ndarray, y_val: np.ndarray,
    classes: Sequence[str], cfg: SimulationConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> SimulationResult:
    """Replay every strategy for every seed; returns one row per (strategy, seed, round)."""
    cfg = cfg or SimulationConfig()
    for s in cfg.strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; choose from {STRATEGIES}")
    x_train = np.asarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.int64)
    groups = list(groups)
    t0 = time.perf_counter()
    out = SimulationResult(config=asdict(cfg))
    total = len(cfg.seeds) * len(cfg.strategies) * (cfg.rounds + 1)
    done = 0
    for seed in cfg.seeds:
        rng = np.random.default_rng(seed)
        pool = np.arange(len(x_train))
        if cfg.max_pool is not None and cfg.max_pool < len(pool):
            pool = np.sort(rng.choice(pool, cfg.max_pool, replace=False))
        xp = prepare_features(x_train[pool], seed=seed)
        random_start = rng.choice(len(pool), min(cfg.initial, len(pool)), replace=False)
        for strategy in cfg.strategies:
            if strategy in COLD_START_ITSELF:
                labeled = select(strategy, SelectionInput(xp, np.array([], dtype=np.int64), np.arange(len(pool)),
                                                          seed=seed), budget=cfg.initial)
            else:
                labeled = random_start.copy()
            for rnd in range(cfg.rounds + 1):
                idx = pool[labeled]
                head, metrics = _fit_and_score(x_train[idx], y_train[idx], [groups[i] for i in idx], x_val, y_val,
                                               classes, cfg.head_kind, seed)
                out.rows.append({"strategy": strategy, "seed": seed, "round": rnd, "n_labels": len(labeled),
                                 **metrics})
                done += 1
                if progress is not None:
                    eta = (time.perf_counter() - t0) / done * (total - done)
                    progress(f"{done}/{total} {strategy} seed {seed} n={len(labeled)} acc={metrics['accuracy']:.3f} "
                             f"qwk={metrics.get('qwk', float('nan')):.3f} (ETA {eta / 60:.1f} min)")
                if rnd == cfg.rounds:
                    break
                cand = np.setdiff1d(np.arange(len(pool)), labeled)
                if len(cand) == 0:
                    break
                probs = None
                if strategy in ("uncertainty", "hybrid"):
                    probs = np.zeros((len(pool), len(classes)))
                    probs[cand] = head.predict_proba(x_train[pool[cand]])
                kwargs = {"kind": cfg.uncertainty_kind} if strategy in ("uncertainty", "hybrid") else {}
                picks = select(strategy, SelectionInput(xp, labeled, cand, probs, seed=seed + rnd),
                               budget=cfg.per_round, **kwargs)
                labeled = np.concatenate([labeled, picks])
    out.seconds = time.perf_counter() - t0
    return out


def summarize(result: SimulationResult, metric: str = "accuracy") -> dict:
    """Per strategy: mean curve, area under it, and the difference to random at every budget (honestly signed)."""
    rows = result.rows
    strategies = sorted({r["strategy"] for r in rows}, key=lambda s: (s != "random", s))
    budgets = sorted({r["n_labels"] for r in rows})
    curves: dict[str, dict[int, tuple[float, float]]] = {}
    for s in strategies:
        curves[s] = {}
        for b in budgets:
            vals = [r[metric] for r in rows if r["strategy"] == s and r["n_labels"] == b and metric in r]
            if vals:
                curves[s][b] = (float(np.mean(vals)), float(np.std(vals)))
    summary = {"metric": metric, "budgets": budgets, "strategies": {}}
    base = curves.get("random", {})
    paired = {(r["seed"], r["n_labels"]): r[metric] for r in rows if r["strategy"] == "random" and metric in r}
    for s, curve in curves.items():
        means = [curve[b][0] for b in budgets if b in curve]
        entry = {"curve": {str(b): curve[b] for b in curve}, "area": float(np.mean(means)) if means else None}
        if s != "random" and base:
            diffs = [curve[b][0] - base[b][0] for b in budgets if b in curve and b in base]
            entry["mean_diff_vs_random"] = float(np.mean(diffs)) if diffs else None
            entry["budgets_better_than_random"] = int(sum(d > 0 for d in diffs))
            entry["budgets_worse_than_random"] = int(sum(d < 0 for d in diffs))
            # paired by seed and budget: the same random start and validation set, so seed noise cancels
            d = np.asarray([r[metric] - paired[(r["seed"], r["n_labels"])] for r in rows
                            if r["strategy"] == s and metric in r and (r["seed"], r["n_labels"]) in paired])
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
            mean = float(d.mean()) if len(d) else 0.0
            entry["paired_diff"] = {"mean": mean, "se": se, "n": len(d)}
            verdict = ("better than" if mean - 2 * se > 0 else "worse than" if mean + 2 * se < 0
                       else "indistinguishable from")
            entry["verdict"] = f"{verdict} random on {metric} (paired mean {mean:+.3f} +- {2 * se:.3f})"
        summary["strategies"][s] = entry
    return summary


def plot_curves(result: SimulationResult, path: str | Path, metrics: Sequence[str] = ("accuracy", "qwk")) -> Path:
    """Learning curves (mean +- sd over seeds) per strategy, one panel per metric, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        summary = summarize(result, metric)
        for s, entry in summary["strategies"].items():
            bs = sorted(int(b) for b in entry["curve"])
            mean = np.array([entry["curve"][str(b)][0] for b in bs])
            sd = np.array([entry["curve"][str(b)][1] for b in bs])
            style = {"color": "black", "linestyle": "--"} if s == "random" else {}
            ax.plot(bs, mean, marker="o", ms=3, label=s, **style)
            ax.fill_between(bs, mean - sd, mean + sd, alpha=0.12, **({"color": "black"} if s == "random" else {}))
        ax.set_xlabel("labelled images")
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    n_seeds = len(result.config.get("seeds", ()))
    fig.suptitle(f"Active learning replay (mean +- sd over {n_seeds} seeds, head: {result.config.get('head_kind')})")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def load_kl_split(folder: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """``knee_kl/<split>/<grade>/*.png`` -> (paths, grade labels, patient groups)."""
    from orthofm.heads import patient_id_from_path

    folder = Path(folder)
    paths, labels = [], []
    for grade in sorted(p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()):
        for f in sorted(grade.glob("*.png")):
            paths.append(f)
            labels.append(int(grade.name))
    if not paths:
        raise FileNotFoundError(f"no <grade>/*.png images under {folder}")
    return paths, np.asarray(labels), [patient_id_from_path(p) for p in paths]


def run_from_folders(train: str | Path, val: str | Path, out: str | Path, cfg: SimulationConfig,
                     weights: str | Path | None = None, cache: str | Path | None = None) -> dict:
    """Embed (cached) the KL train/val folders with the backbone, replay, and write rows/summary/plot to ``out``."""
    from orthofm.heads import EmbeddingStore
    from orthofm.heads.runtime import default_cache_dir, default_model_dir
    from orthofm.models import load_backbone

    backbone = load_backbone(weights or default_model_dir())
    store = EmbeddingStore(cache or default_cache_dir(), backbone)
    p_tr, y_tr, g_tr = load_kl_split(train)
    p_val, y_val, _ = load_kl_split(val)
    rng = np.random.default_rng(12345)
    if cfg.max_pool is not None and cfg.max_pool < len(p_tr):  # quick runs: embed only a subsample
        keep = np.sort(rng.choice(len(p_tr), cfg.max_pool, replace=False))
        p_tr, y_tr, g_tr = [p_tr[i] for i in keep], y_tr[keep], [g_tr[i] for i in keep]
    if cfg.max_val is not None and cfg.max_val < len(p_val):
        keep = np.sort(rng.choice(len(p_val), cfg.max_val, replace=False))
        p_val, y_val = [p_val[i] for i in keep], y_val[keep]
    x_tr, x_val = store.embed_paths(p_tr), store.embed_paths(p_val)
    classes = [f"KL{i}" for i in range(5)]
    result = simulate(x_tr, y_tr, g_tr, x_val, y_val, classes, cfg, progress=log.info)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=sorted({k for r in result.rows for k in r}))
    writer.writeheader()
    writer.writerows(result.rows)
    atomic_write_text(out / "al_rows.csv", buf.getvalue())
    summary = {m: summarize(result, m) for m in ("accuracy", "qwk")}
    summary["config"] = result.config
    summary["backbone_id"] = store.backbone_id
    summary["seconds"] = result.seconds
    atomic_write_text(out / "al_summary.json", json.dumps(summary, indent=2))
    plot_curves(result, out / "al_curves.png")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Replay active learning on the knee KL train/val folders")
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--weights", default=None)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--initial", type=int, default=10)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-pool", type=int, default=None, help="subsample the training pool (quick runs)")
    p.add_argument("--max-val", type=int, default=None, help="subsample the validation set (quick runs)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = SimulationConfig(strategies=tuple(a.strategies.split(",")), initial=a.initial, per_round=a.per_round,
                           rounds=a.rounds, seeds=tuple(int(s) for s in a.seeds.split(",")), max_pool=a.max_pool,
                           max_val=a.max_val)
    summary = run_from_folders(a.train, a.val, a.out, cfg, a.weights)
    for metric in ("accuracy", "qwk"):
        for s, e in summary[metric]["strategies"].items():
            print(f"{metric:8s} {s:12s} area={e['area']:.3f} {e.get('verdict', '(baseline)')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
