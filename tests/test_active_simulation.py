"""The active-learning replay: curves grow by the budget, no image is acquired twice, the summary is signed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orthofm.evaluate.al_simulation import SimulationConfig, plot_curves, simulate, summarize


def five_classes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 5
    centres = np.random.default_rng(99).standard_normal((5, 24)) * 3  # same classes in train and val
    return (centres[y] + rng.standard_normal((n, 24))).astype(np.float32), y


def test_replay_rows_summary_and_plot(tmp_path: Path) -> None:
    x, y = five_classes(300, 0)
    xv, yv = five_classes(100, 1)
    cfg = SimulationConfig(initial=10, per_round=5, rounds=2, seeds=(0,))
    res = simulate(x, y, [f"p{i}" for i in range(len(y))], xv, yv, [f"KL{i}" for i in range(5)], cfg)
    assert len(res.rows) == len(cfg.strategies) * 1 * 3
    for s in cfg.strategies:
        ns = [r["n_labels"] for r in res.rows if r["strategy"] == s and r["seed"] == 0]
        assert ns == [10, 15, 20]
    assert all(0 <= r["accuracy"] <= 1 and -1 <= r["qwk"] <= 1 for r in res.rows)
    # separable data: every strategy learns something well above chance by 20 labels
    last = [r["accuracy"] for r in res.rows if r["n_labels"] == 20]
    assert min(last) > 0.5
    summary = summarize(res, "accuracy")
    assert set(summary["strategies"]) == set(cfg.strategies)
    for s, e in summary["strategies"].items():
        if s != "random":
            assert e["budgets_better_than_random"] + e["budgets_worse_than_random"] <= 3
            assert " random on accuracy (paired mean " in e["verdict"]
            # one seed: the standard error is over seeds, so a single seed can never be "better than random"
            assert e["paired_diff"]["n"] == 1
            assert e["verdict"].startswith("indistinguishable from")
            assert set(e["paired_diff_by_budget"]) == {"10", "15", "20"}
    assert summary["full_pool"]["n_labels"] == 300
    png = plot_curves(res, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_strategy_is_refused() -> None:
    x, y = five_classes(50, 0)
    with pytest.raises(ValueError, match="unknown strategy"):
        simulate(x, y, list(map(str, range(50))), x, y, list("abcde"), SimulationConfig(strategies=("bald",)))


def test_budget_schedule_rounds_of_unequal_size_and_shared_start() -> None:
    x, y = five_classes(200, 0)
    xv, yv = five_classes(60, 1)
    cfg = SimulationConfig(strategies=("random", "uncertainty", "typiclust"), budgets=(5, 10, 25), seeds=(0,),
                           full_pool=False)
    res = simulate(x, y, [f"p{i // 2}" for i in range(len(y))], xv, yv, [f"KL{i}" for i in range(5)], cfg)
    for s in cfg.strategies:
        for seed in cfg.seeds:
            assert [r["n_labels"] for r in res.rows if r["strategy"] == s and r["seed"] == seed] == [5, 10, 25]
    # random and uncertainty start from the same labels, so round 0 scores identically (paired comparison)
    r0 = {(r["strategy"], r["seed"]): r["accuracy"] for r in res.rows if r["round"] == 0}
    assert all(r0[("random", s)] == r0[("uncertainty", s)] for s in cfg.seeds)
    assert res.full_pool == {}
    with pytest.raises(ValueError, match="strictly increasing"):
        SimulationConfig(budgets=(10, 10, 20)).schedule()


def test_summary_says_when_random_wins() -> None:
    """A strategy that is worse on every seed must be reported as worse, not hidden in an average."""
    rows = [{"strategy": s, "seed": seed, "round": i, "n_labels": b, "accuracy": acc}
            for seed in range(4) for i, b in enumerate((10, 20, 40))
            for s, acc in (("random", 0.5 + 0.01 * seed + 0.05 * i), ("coreset", 0.45 + 0.01 * seed + 0.05 * i))]
    from orthofm.evaluate.al_simulation import SimulationResult, render_readme

    res = SimulationResult(rows=rows, config={"seeds": [0, 1, 2, 3]})
    e = summarize(res, "accuracy")["strategies"]["coreset"]
    assert e["verdict"].startswith("worse than random")
    assert e["budgets_worse_than_random"] == 3 and e["budgets_better_than_random"] == 0
    assert e["paired_diff"]["mean"] == pytest.approx(-0.05)
    summary = {m: summarize(res, m) if m == "accuracy" else summarize(res, "accuracy") for m in ("accuracy", "qwk")}
    summary.update(config={"seeds": [0, 1, 2, 3], "head_kind": "probe", "uncertainty_kind": "entropy",
                           "schedule": [10, 20, 40]}, backbone_id="b", n_train=100, n_val=50, seconds=60.0)
    text = render_readme(summary, "python -m orthofm.evaluate.al_simulation --preset full")
    assert "| coreset | 0.465 (-0.050*) |" in text and "worse than random" in text


def test_seeds_in_worker_processes_give_the_same_rows() -> None:
    """``jobs`` only changes where seeds run: rows, order and full-pool metrics are identical."""
    x, y = five_classes(120, 0)
    xv, yv = five_classes(40, 1)
    cfg = SimulationConfig(strategies=("random", "coreset"), budgets=(5, 10), seeds=(0, 1), head_kind="knn")
    args = (x, y, [f"p{i}" for i in range(len(y))], xv, yv, [f"KL{i}" for i in range(5)], cfg)
    seen: list[list[int]] = []
    serial = simulate(*args)
    parallel = simulate(*args, jobs=2, on_seed=lambda r: seen.append(list(r.seeds_done)))
    strip = [{k: v for k, v in r.items() if k != "select_seconds"} for r in serial.rows]
    assert [{k: v for k, v in r.items() if k != "select_seconds"} for r in parallel.rows] == strip
    assert parallel.full_pool == serial.full_pool and parallel.seeds_done == [0, 1]
    assert sorted(map(len, seen)) == [1, 2]  # written after each seed, whichever finished first
