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
            assert e["paired_diff"]["n"] == 3
    png = plot_curves(res, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_strategy_is_refused() -> None:
    x, y = five_classes(50, 0)
    with pytest.raises(ValueError, match="unknown strategy"):
        simulate(x, y, list(map(str, range(50))), x, y, list("abcde"), SimulationConfig(strategies=("bald",)))
