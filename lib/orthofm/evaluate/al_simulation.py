"""Active-learning replay on labelled data: does a strategy reach a given accuracy with fewer labels than random?

Protocol (the same for every strategy, several seeds):
1. Round 0: ``initial`` images are labelled. Strategies that need no model (typiclust, probcover, coreset) choose
   them themselves (that is their point in the cold start); random, uncertainty and hybrid start from the same
   random set of that seed, so the uncertainty ones are compared from identical footing with random.
2. A head (``orthofm.heads.fit_head``, logistic probe by default) is fitted on the labelled images' cached
   features; validation accuracy, macro-F1 and quadratic kappa are recorded for that number of labels.
3. The strategy picks the next ``per_round`` images from the unlabelled training pool (uncertainty-based ones
   use the current head's calibrated probabilities); their true labels are "acquired"; repeat.

Instead of equal rounds, ``budgets`` may list the label counts to evaluate (10, 20, 30, 50, ...): the
cold-start regime, where strategies differ most, gets fine steps and the tail coarse ones, for the same number
of head fits (the dominant cost: the probe's C grid is cross-validated on every fit).

The summary is honest by construction: per strategy it reports the mean difference to random at every
budget, the area under the learning curve, and how many budgets random was better, including when random wins.
A head fitted on the whole pool (every label) is the ceiling the curves are read against.

``--preset full`` is the whole protocol on the KL data (all training images as the pool, the whole validation
split, 5 seeds) writing ``docs/results/active_learning/``; rerun it whenever the default backbone changes.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from orthofm.active import STRATEGIES, SelectionInput, prepare_features, select
from orthofm.utils.atomic import atomic_write_bytes, atomic_write_text

__all__ = [
    "FULL_PRESET", "SimulationConfig", "load_kl_split", "plot_curves", "render_readme", "run_from_folders",
    "simulate", "summarize",
]

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
    budgets: tuple[int, ...] | None = None  # label counts to evaluate; overrides initial/per_round/rounds
    full_pool: bool = True  # also fit one head on every pool label: the ceiling the curves approach

    def schedule(self) -> list[int]:
        """Cumulative label counts evaluated, round 0 first (strictly increasing)."""
        if self.budgets is None:
            return [self.initial + r * self.per_round for r in range(self.rounds + 1)]
        b = [int(v) for v in self.budgets]
        if not b or b[0] < 1 or any(x >= y for x, y in itertools.pairwise(b)):
            raise ValueError(f"budgets must be positive and strictly increasing, got {self.budgets}")
        return b


@dataclass
class SimulationResult:
    rows: list[dict] = field(default_factory=list)  # strategy, seed, round, n_labels, metrics...
    config: dict = field(default_factory=dict)
    seconds: float = 0.0
    full_pool: dict = field(default_factory=dict)  # metrics of a head fitted on every training label (seed 0)
    cpu_seconds: float = 0.0  # this process's CPU time: on a shared box the wall time says more about the load
    seeds_done: list[int] = field(default_factory=list)


def _fit_and_score(x_tr, y_tr, g_tr, x_val, y_val, classes, kind, seed):
    from orthofm.evaluate.metrics import classification_metrics
    from orthofm.heads import fit_head

    head = fit_head(x_tr, y_tr, g_tr, list(classes), kind=kind, ordinal=True, seed=seed)
    probs = head.predict_proba(x_val)
    m = classification_metrics(y_val, probs, ordinal=True, y_pred=head.decode(probs))
    return head, {k: float(m[k]) for k in ("accuracy", "macro_f1", "qwk") if k in m}


def _replay_seed(x_train: np.ndarray, y_train: np.ndarray, groups: list[str], x_val: np.ndarray,
                 y_val: np.ndarray, classes: Sequence[str], cfg: SimulationConfig, seed: int,
                 progress: Callable[[str], None] | None = None) -> tuple[list[dict], float]:
    """Every strategy for one seed: rows in strategy order, and this process's CPU seconds for them."""
    cpu0 = time.process_time()
    schedule = cfg.schedule()
    rows: list[dict] = []
    rng = np.random.default_rng(seed)
    pool = np.arange(len(x_train))
    if cfg.max_pool is not None and cfg.max_pool < len(pool):
        pool = np.sort(rng.choice(pool, cfg.max_pool, replace=False))
    xp = prepare_features(x_train[pool], seed=seed)
    random_start = rng.choice(len(pool), min(schedule[0], len(pool)), replace=False)
    # random, uncertainty and hybrid share round 0 (the same labels): fit that head once per seed
    round0: dict[bytes, tuple] = {}
    total = len(cfg.strategies) * len(schedule)
    for strategy in cfg.strategies:
        t_sel = time.perf_counter()
        if strategy in COLD_START_ITSELF:
            labeled = select(strategy, SelectionInput(xp, np.array([], dtype=np.int64), np.arange(len(pool)),
                                                      seed=seed), budget=schedule[0])
        else:
            labeled = random_start.copy()
        select_s = time.perf_counter() - t_sel
        for rnd in range(len(schedule)):
            idx = pool[labeled]
            key = np.sort(idx).tobytes()
            if rnd == 0 and key in round0:
                head, metrics = round0[key]
            else:
                head, metrics = _fit_and_score(x_train[idx], y_train[idx], [groups[i] for i in idx], x_val,
                                               y_val, classes, cfg.head_kind, seed)
                if rnd == 0:
                    round0[key] = (head, metrics)
            rows.append({"strategy": strategy, "seed": seed, "round": rnd, "n_labels": len(labeled),
                         **metrics, "select_seconds": round(select_s, 4)})
            if progress is not None:
                progress(f"seed {seed}: {len(rows)}/{total} {strategy} n={len(labeled)} "
                         f"acc={metrics['accuracy']:.3f} qwk={metrics.get('qwk', float('nan')):.3f}")
            if rnd == len(schedule) - 1:
                break
            cand = np.setdiff1d(np.arange(len(pool)), labeled)
            if len(cand) == 0:
                break
            t_sel = time.perf_counter()
            probs = None
            if strategy in ("uncertainty", "hybrid"):
                probs = np.zeros((len(pool), len(classes)))
                probs[cand] = head.predict_proba(x_train[pool[cand]])
            kwargs = {"kind": cfg.uncertainty_kind} if strategy in ("uncertainty", "hybrid") else {}
            picks = select(strategy, SelectionInput(xp, labeled, cand, probs, seed=seed + rnd),
                           budget=schedule[rnd + 1] - len(labeled), **kwargs)
            labeled = np.concatenate([labeled, picks])
            select_s = time.perf_counter() - t_sel
    return rows, time.process_time() - cpu0


def _replay_seed_in_child(args: tuple) -> tuple[list[dict], float]:
    """Process-pool entry point: one seed, logging its progress to the inherited stderr."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("orthofm.heads").setLevel(logging.WARNING)
    return _replay_seed(*args, progress=log.info)


def simulate(
    x_train: np.ndarray, y_train: np.ndarray, groups: Sequence[str], x_val: np.ndarray, y_val: np.ndarray,
    classes: Sequence[str], cfg: SimulationConfig | None = None,
    progress: Callable[[str], None] | None = None, on_seed: Callable[[SimulationResult], None] | None = None,
    jobs: int = 1,
) -> SimulationResult:
    """Replay every strategy for every seed; returns one row per (strategy, seed, round).

    ``on_seed`` sees the result after every completed seed, so a long run that is stopped early still leaves
    whole seeds behind (never a seed with some strategies missing, which would bias the paired comparison).
    ``jobs`` > 1 replays seeds in that many spawned processes: the seeds are independent and the result is the
    same; it only helps on a box where a nice'd process waits for the CPU far longer than it uses it (the
    replay needs a few CPU-minutes in total either way)."""
    cfg = cfg or SimulationConfig()
    for s in cfg.strategies:
        if s not in STRATEGIES:
            raise ValueError(f"unknown strategy {s!r}; choose from {STRATEGIES}")
    x_train = np.asarray(x_train, dtype=np.float32)
    y_train = np.asarray(y_train, dtype=np.int64)
    groups = list(groups)
    schedule = cfg.schedule()
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = SimulationResult(config={**asdict(cfg), "schedule": schedule})

    def fit_full_pool() -> None:
        if cfg.full_pool:
            _, out.full_pool = _fit_and_score(x_train, y_train, groups, x_val, y_val, classes, cfg.head_kind, 0)
            out.full_pool["n_labels"] = len(x_train)

    child_cpu = 0.0
    by_seed: dict[int, list[dict]] = {}

    def finish(seed: int, rows: list[dict], cpu: float) -> None:
        nonlocal child_cpu
        by_seed[seed] = rows
        child_cpu += cpu
        out.rows = [r for s in cfg.seeds if s in by_seed for r in by_seed[s]]
        out.seeds_done = [s for s in cfg.seeds if s in by_seed]
        out.seconds = time.perf_counter() - t0
        out.cpu_seconds = time.process_time() - cpu0 + (child_cpu if jobs > 1 else 0.0)
        if progress is not None:
            progress(f"seed {seed} done ({len(out.seeds_done)}/{len(cfg.seeds)} seeds, {out.seconds / 60:.1f} min)")
        if on_seed is not None:
            on_seed(out)

    if jobs <= 1 or len(cfg.seeds) == 1:
        fit_full_pool()
        for seed in cfg.seeds:
            finish(seed, *_replay_seed(x_train, y_train, groups, x_val, y_val, classes, cfg, seed, progress))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # spawn, not fork: the parent has torch's thread pools loaded
        with ProcessPoolExecutor(min(jobs, len(cfg.seeds)), mp_context=mp.get_context("spawn")) as ex:
            futures = {ex.submit(_replay_seed_in_child, (x_train, y_train, groups, x_val, y_val, list(classes),
                                                         cfg, seed)): seed for seed in cfg.seeds}
            fit_full_pool()  # the costliest single fit (every label), while the workers start
            for fut in as_completed(futures):
                finish(futures[fut], *fut.result())
    out.seconds = time.perf_counter() - t0
    return out


def _mean_se(d: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(d, dtype=np.float64)
    if len(a) == 0:
        return 0.0, float("inf")
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("inf")


def summarize(result: SimulationResult, metric: str = "accuracy") -> dict:
    """Per strategy: mean curve, area under it, and the difference to random at every budget (honestly signed).

    Differences are paired (same seed, same budget: random, uncertainty and hybrid share the start, every
    strategy the validation set), so split noise cancels. The verdict's standard error is over *seeds* of the
    per-seed mean difference across budgets: budgets of one seed share their labels and are not independent,
    so treating every (seed, budget) pair as a sample would overstate the evidence.
    """
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
    summary: dict = {"metric": metric, "budgets": budgets, "strategies": {}}
    if result.full_pool and metric in result.full_pool:
        summary["full_pool"] = {"n_labels": result.full_pool.get("n_labels"), metric: result.full_pool[metric]}
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
            by_seed: dict[int, list[float]] = {}
            by_budget: dict[int, list[float]] = {}
            for r in rows:
                if r["strategy"] == s and metric in r and (r["seed"], r["n_labels"]) in paired:
                    d = r[metric] - paired[(r["seed"], r["n_labels"])]
                    by_seed.setdefault(r["seed"], []).append(d)
                    by_budget.setdefault(r["n_labels"], []).append(d)
            mean, se = _mean_se([float(np.mean(v)) for v in by_seed.values()])
            entry["paired_diff"] = {"mean": mean, "se": se, "n": len(by_seed), "unit": "seeds"}
            entry["paired_diff_by_budget"] = {
                str(b): dict(zip(("mean", "se"), _mean_se(v)), n=len(v)) for b, v in sorted(by_budget.items())}
            verdict = ("better than" if mean - 2 * se > 0 else "worse than" if mean + 2 * se < 0
                       else "indistinguishable from")
            entry["verdict"] = f"{verdict} random on {metric} (paired mean {mean:+.3f} +- {2 * se:.3f})"
        summary["strategies"][s] = entry
    return summary


def plot_curves(result: SimulationResult, path: str | Path, metrics: Sequence[str] = ("accuracy", "qwk")) -> Path:
    """Learning curves (mean +- sd over seeds, top) and paired differences to random (mean +- 2 SE over seeds,
    bottom) per strategy, one column per metric, written atomically.

    The bottom row is the one to read: the spread of the top row is mostly the seeds' shared noise, which the
    paired difference removes. The dotted line is a head fitted on every training label (the ceiling)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(metrics), figsize=(6.5 * len(metrics), 8.5), squeeze=False, sharex=True)
    colours = {s: f"C{i}" for i, s in enumerate(sorted({r["strategy"] for r in result.rows} - {"random"}))}
    colours["random"] = "black"
    for col, metric in enumerate(metrics):
        summary = summarize(result, metric)
        top, bottom = axes[0][col], axes[1][col]
        for s, entry in summary["strategies"].items():
            bs = sorted(int(b) for b in entry["curve"])
            mean = np.array([entry["curve"][str(b)][0] for b in bs])
            sd = np.array([entry["curve"][str(b)][1] for b in bs])
            style = {"linestyle": "--"} if s == "random" else {}
            top.plot(bs, mean, marker="o", ms=3, label=s, color=colours[s], **style)
            top.fill_between(bs, mean - sd, mean + sd, alpha=0.10, color=colours[s])
            if s == "random":
                continue
            by_b = entry["paired_diff_by_budget"]
            bs = sorted(int(b) for b in by_b)
            dm = np.array([by_b[str(b)]["mean"] for b in bs])
            dse = np.array([by_b[str(b)]["se"] for b in bs])
            dse = np.where(np.isfinite(dse), dse, 0.0)
            bottom.plot(bs, dm, marker="o", ms=3, label=s, color=colours[s])
            bottom.fill_between(bs, dm - 2 * dse, dm + 2 * dse, alpha=0.12, color=colours[s])
        if "full_pool" in summary:
            fp = summary["full_pool"]
            top.axhline(fp[metric], color="grey", linestyle=":", label=f"all {fp['n_labels']} labels")
        bottom.axhline(0.0, color="black", linestyle="--", lw=1)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.grid(alpha=0.3, which="both")
        top.set_ylabel(f"validation {metric}")
        bottom.set_ylabel(f"{metric} minus random (paired)")
        bottom.set_xlabel("labelled images (log scale)")
    axes[0][0].legend(fontsize=8)
    axes[1][0].legend(fontsize=8)
    n_seeds = len(result.config.get("seeds", ()))
    fig.suptitle(f"Active-learning replay: mean +- sd over {n_seeds} seeds (top), paired difference to random "
                 f"+- 2 SE (bottom); head: {result.config.get('head_kind')}")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def render_readme(summary: dict, command: str) -> str:
    """``README.md`` of a results folder: what was run, per-budget tables, and the verdicts, from the summary
    alone, so a rerun on a new backbone rewrites the numbers and the text that reads them together."""
    import os

    cfg = summary["config"]
    lines = [
        "# Active-learning replay on knee KL grading",
        "",
        "Generated by `orthofm.evaluate.al_simulation`; do not edit by hand (rerun the command instead).",
        "",
        f"- command: `{command}`",
        f"- backbone: `{summary['backbone_id']}` (weights `{summary.get('weights')}`)",
        (f"- pool: {summary['n_train']} training images, validation: {summary['n_val']} images,"
        f" seeds {', '.join(map(str, cfg['seeds']))}, head `{cfg['head_kind']}` refitted at every budget,"
        f" uncertainty `{cfg['uncertainty_kind']}`"),
        f"- budgets (labelled images): {', '.join(map(str, cfg['schedule']))}",
        f"- seeds completed: {', '.join(map(str, summary.get('seeds_done', cfg['seeds'])))}",
        (f"- replay: {summary['seconds'] / 60:.1f} min wall, {summary.get('cpu_seconds', 0) / 60:.1f} CPU-min"
         f" (one thread) after embedding ({summary.get('embed_seconds', 0) / 60:.1f} min, cached afterwards);"
         f" generated {summary.get('generated')}; load average (1/5/15 min) at start"
         f" {summary.get('load_average_start')}, at end {summary.get('load_average_end')} on"
         f" {os.cpu_count()} CPUs"),
        "",
        "Files: `al_rows.csv` (one row per strategy, seed and budget), `al_summary.json`, `al_curves.png`.",
        "Cells are the mean over seeds and, in brackets, the paired difference to random at that budget;",
        "`*` marks a difference beyond 2 standard errors over seeds. The verdict uses the per-seed mean",
        "difference across all budgets (n = seeds).",
    ]
    for metric in ("accuracy", "qwk"):
        sm = summary[metric]
        budgets = [str(b) for b in sm["budgets"]]
        lines += ["", f"## Validation {metric}", ""]
        if "full_pool" in sm:
            lines.append(f"A head on all {sm['full_pool']['n_labels']} training labels: {sm['full_pool'][metric]:.3f}.")
            lines.append("")
        lines.append("| strategy | " + " | ".join(budgets) + " | verdict |")
        lines.append("|---|" + "---:|" * len(budgets) + "---|")
        for s, e in sm["strategies"].items():
            cells = []
            for b in budgets:
                if b not in e["curve"]:
                    cells.append("–")
                    continue
                cell = f"{e['curve'][b][0]:.3f}"
                d = e.get("paired_diff_by_budget", {}).get(b)
                if d is not None:
                    star = "*" if abs(d["mean"]) > 2 * d["se"] else ""
                    cell += f" ({d['mean']:+.3f}{star})"
                cells.append(cell)
            lines.append(f"| {s} | " + " | ".join(cells) + f" | {e.get('verdict', 'baseline')} |")
    return "\n".join(lines) + "\n"


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
                     weights: str | Path | None = None, cache: str | Path | None = None,
                     command: str | None = None, jobs: int = 1) -> dict:
    """Embed (cached) the KL train/val folders with the backbone, replay, and write rows/summary/plot to ``out``
    (plus a generated ``README.md`` when ``command`` says how the run was started)."""
    import datetime as dt
    import os

    from orthofm.heads import EmbeddingStore
    from orthofm.heads.runtime import default_cache_dir, default_model_dir
    from orthofm.models import load_backbone

    weights = Path(weights or default_model_dir())
    backbone = load_backbone(weights)
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
    load = [round(v, 2) for v in os.getloadavg()]
    t_embed = time.perf_counter()
    x_tr, x_val = store.embed_paths(p_tr), store.embed_paths(p_val)
    embed_s = time.perf_counter() - t_embed
    classes = [f"KL{i}" for i in range(5)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict = {}

    def write(result: SimulationResult) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=sorted({k for r in result.rows for k in r}))
        writer.writeheader()
        writer.writerows(result.rows)
        atomic_write_text(out / "al_rows.csv", buf.getvalue())
        summary: dict = {m: summarize(result, m) for m in ("accuracy", "qwk")}
        summary.update(
            config=result.config, backbone_id=store.backbone_id, weights=str(weights), seconds=result.seconds,
            cpu_seconds=result.cpu_seconds, embed_seconds=embed_s, n_train=len(p_tr), n_val=len(p_val),
            full_pool=result.full_pool, seeds_done=list(result.seeds_done), load_average_start=load,
            load_average_end=[round(v, 2) for v in os.getloadavg()],
            generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), command=command,
        )
        atomic_write_text(out / "al_summary.json", json.dumps(summary, indent=2) + "\n")
        plot_curves(result, out / "al_curves.png")
        if command is not None:
            atomic_write_text(out / "README.md", render_readme(summary, command))
        written.clear()
        written.update(summary)
        log.info("wrote %s (seeds done: %s)", out, result.seeds_done)

    write(simulate(x_tr, y_tr, g_tr, x_val, y_val, classes, cfg, progress=log.info, on_seed=write, jobs=jobs))
    return written


def shared_dir() -> Path:
    """``$ORTHOFM_SHARED``, else ``../shared`` beside the repository (where the tests look too)."""
    import os

    env = os.environ.get("ORTHOFM_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared"


# The whole protocol of issue 8 on the KL data: every training image is the pool, the whole validation split is
# scored, 5 seeds. Fine budgets early (the cold start, where selection matters most), coarse later; 46 probe fits
# per seed (random, uncertainty and hybrid share round 0) plus one on all labels: about 30 CPU-minutes after
# the one-off embedding.
FULL_PRESET: dict = {
    "train": "knee_kl/train",  # relative to $ORTHOFM_SHARED/data (default ../shared/data)
    "val": "knee_kl/val",
    "out": "docs/results/active_learning",
    "budgets": "10,20,30,50,100,200,350,500",
    "seeds": "0,1,2,3,4",
}


def main(argv: Sequence[str] | None = None) -> int:
    import shlex
    import sys

    p = argparse.ArgumentParser(description="Replay active learning on the knee KL train/val folders")
    p.add_argument("--preset", choices=("full",), default=None,
                   help="full: the whole protocol into docs/results/active_learning (flags given override it)")
    p.add_argument("--train", default=None)
    p.add_argument("--val", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--weights", default=None, help="backbone (default: the app's default model folder)")
    p.add_argument("--cache", default=None, help="embedding cache root (default: ~/.cache/orthofm/embeddings)")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--initial", type=int, default=10)
    p.add_argument("--per-round", type=int, default=10)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--budgets", default=None, help="comma-separated label counts to evaluate (overrides the rounds)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--max-pool", type=int, default=None, help="subsample the training pool (quick runs)")
    p.add_argument("--max-val", type=int, default=None, help="subsample the validation set (quick runs)")
    p.add_argument("--jobs", type=int, default=1, help="replay seeds in this many processes (same result)")
    a = p.parse_args(argv)
    if a.preset == "full":
        for key, value in FULL_PRESET.items():
            if getattr(a, key) is None:
                setattr(a, key, str(shared_dir() / "data" / value) if key in ("train", "val") else value)
    missing = [k for k in ("train", "val", "out") if getattr(a, k) is None]
    if missing:
        p.error(f"--{', --'.join(missing)} required (or --preset full)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    budgets = tuple(int(b) for b in a.budgets.split(",")) if a.budgets else None
    cfg = SimulationConfig(strategies=tuple(a.strategies.split(",")), initial=a.initial, per_round=a.per_round,
                           rounds=a.rounds, seeds=tuple(int(s) for s in (a.seeds or "0,1,2").split(",")),
                           max_pool=a.max_pool, max_val=a.max_val, budgets=budgets)
    command = "python -m orthofm.evaluate.al_simulation " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    summary = run_from_folders(a.train, a.val, a.out, cfg, a.weights, a.cache, command=command, jobs=a.jobs)
    for metric in ("accuracy", "qwk"):
        for s, e in summary[metric]["strategies"].items():
            print(f"{metric:8s} {s:12s} area={e['area']:.3f} {e.get('verdict', '(baseline)')}")
    print(f"all {summary['n_train']} training labels: " + ", ".join(
        f"{m} {summary['full_pool'][m]:.3f}" for m in ("accuracy", "qwk") if m in summary["full_pool"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
