"""The benchmark runner: discovery, row checks, reports, regression flags (never failures), crash capture."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from benchmarks import bench_matmul, run_all
from orthofm import __version__


def _outcome(value: float, unit: str, name: str = "thing") -> run_all.BenchOutcome:
    row = run_all.validate_row({"name": name, "value": value, "unit": unit, "reference": None, "ratio": None,
                                "notes": ""})
    return run_all.BenchOutcome(bench="b", rows=[row])


def _previous(value: float, unit: str, name: str = "thing") -> dict:
    return {"results": [{"bench": "b", "name": name, "value": value, "unit": unit}]}


def test_discovers_the_repository_benches() -> None:
    found = run_all.discover()
    assert "matmul" in found and found["matmul"].name == "bench_matmul.py"
    assert set(run_all.discover(only=["matmul"])) == {"matmul"}
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.discover(only=["nope"])


def test_row_validation() -> None:
    row = {"name": "x", "value": 1.5, "unit": "ms", "reference": None, "ratio": None, "notes": ""}
    assert run_all.validate_row(row)["higher_is_better"] is False
    assert run_all.validate_row({**row, "unit": "GFLOP/s"})["higher_is_better"] is True
    assert run_all.validate_row({**row, "higher_is_better": True})["higher_is_better"] is True
    with pytest.raises(ValueError, match=r"lacks keys \['notes'\]"):
        run_all.validate_row({k: v for k, v in row.items() if k != "notes"})
    with pytest.raises(TypeError, match="value must be a number"):
        run_all.validate_row({**row, "value": "fast"})
    with pytest.raises(TypeError, match="must be a dict"):
        run_all.validate_row([1, 2])


@pytest.mark.parametrize(
    ("old", "new", "unit", "flagged"),
    [
        (100.0, 70.0, "GFLOP/s", True),  # throughput fell 30%
        (100.0, 85.0, "GFLOP/s", False),  # 15%: noise
        (100.0, 150.0, "GFLOP/s", False),  # faster
        (10.0, 13.0, "ms", True),  # latency up 30% = 23% less performance
        (10.0, 11.0, "ms", False),
        (10.0, 5.0, "ms", False),
    ],
)
def test_regression_threshold_respects_direction(old: float, new: float, unit: str, flagged: bool) -> None:
    found = run_all.find_regressions(_previous(old, unit), [_outcome(new, unit)])
    assert bool(found) is flagged
    if flagged:
        assert found[0]["previous"] == old and found[0]["current"] == new


def test_rows_without_history_or_with_another_unit_are_not_compared() -> None:
    assert run_all.find_regressions(None, [_outcome(1.0, "ms")]) == []
    assert run_all.find_regressions(_previous(100.0, "s"), [_outcome(1.0, "ms")]) == []
    assert run_all.find_regressions(_previous(100.0, "ms", name="other"), [_outcome(1.0, "ms")]) == []


def test_full_run_writes_reports_flags_regressions_and_captures_crashes(tmp_path: Path) -> None:
    benches, out = tmp_path / "benches", tmp_path / "docs"
    benches.mkdir()
    out.mkdir()
    (benches / "bench_sorting.py").write_text(textwrap.dedent("""
        import random, time

        def run():
            data = [random.random() for _ in range(20000)]
            start = time.perf_counter()
            sorted(data)
            ms = (time.perf_counter() - start) * 1e3
            return [{"name": "sort_20k", "value": ms, "unit": "ms", "reference": None, "ratio": None,
                     "notes": "sorted() of 20k floats"}]
    """))
    (benches / "bench_broken.py").write_text("def run():\n    raise RuntimeError('bench exploded')\n")
    # previous report claims sorting took 1 ns: the new timing is certainly a >20% "regression"
    (out / "benchmarks.json").write_text(json.dumps(
        {"results": [{"bench": "sorting", "name": "sort_20k", "value": 1e-6, "unit": "ms"}]}))

    report = run_all.run_all(bench_dir=benches, out_dir=out)

    assert [r["name"] for r in report["results"]] == ["sort_20k"]
    assert 0 < report["results"][0]["value"] < 10_000
    assert set(report["errors"]) == {"broken"} and "bench exploded" in report["errors"]["broken"]
    assert [g["name"] for g in report["regressions"]] == ["sort_20k"]
    saved = json.loads((out / "benchmarks.json").read_text())
    assert saved["results"] == report["results"]
    assert saved["machine"]["libraries"]["orthofm"] == __version__
    assert saved["machine"]["torch_threads"] >= 1
    md = (out / "benchmarks.md").read_text()
    assert "| sorting | sort_20k |" in md
    assert "sorting/sort_20k: 1e-06 ->" in md
    assert "bench exploded" in md
    assert " ".join(saved["machine"]["isa_flags"]) in md


def test_partial_run_keeps_other_benches_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    benches, out = tmp_path / "benches", tmp_path / "docs"
    benches.mkdir()
    out.mkdir()
    row = '[{"name": "n", "value": 2.0, "unit": "x", "reference": None, "ratio": None, "notes": ""}]'
    for name in ("alpha", "beta"):
        (benches / f"bench_{name}.py").write_text(f"def run():\n    return {row}\n")
    run_all.run_all(bench_dir=benches, out_dir=out)
    full = json.loads((out / "benchmarks.json").read_text())
    report = run_all.run_all(bench_dir=benches, out_dir=out, only=["beta"])
    assert sorted(r["bench"] for r in report["results"]) == ["alpha", "beta"]
    assert report["regressions"] == []
    # the header says which rows were re-measured and where the others come from
    assert report["base_run"]["generated"] == full["generated"]
    assert set(report["partial_reruns"]) == {"beta"} and set(report["bench_seconds"]) == {"alpha", "beta"}
    md = (out / "benchmarks.md").read_text()
    assert "partial re-runs: `beta`" in md and f"full run generated {full['generated']}" in md
    again = run_all.run_all(bench_dir=benches, out_dir=out, only=["alpha"])
    assert again["base_run"] == report["base_run"] and set(again["partial_reruns"]) == {"alpha", "beta"}
    assert " on " not in md.split("partial re-runs:")[1].split("\n")[0]  # one machine: not named per bench

    # a re-run on another CPU names each source's machine, so no row is attributed to the wrong one
    elsewhere = {**full["machine"], "cpu_model": "Other CPU", "native_bf16": not full["machine"]["native_bf16"]}
    monkeypatch.setattr(run_all, "describe_machine", lambda: dict(elsewhere))
    moved = run_all.run_all(bench_dir=benches, out_dir=out, only=["beta"])
    assert moved["rerun_machines"]["beta"] == run_all.machine_label(elsewhere)
    assert moved["rerun_machines"]["alpha"] == run_all.machine_label(full["machine"])
    line = (out / "benchmarks.md").read_text().split("partial re-runs:")[1].split("\n")[0]
    assert f"`beta` at {moved['generated']} on Other CPU" in line
    assert f"generated {full['generated']} on {full['machine']['cpu_model']}" in line


def test_partial_run_keeps_uncommitted_rows_of_other_benches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows come from the report on disk (the latest run, maybe not committed yet); regressions are still judged
    against the committed one."""
    benches, out = tmp_path / "benches", tmp_path / "docs"
    benches.mkdir()
    out.mkdir()
    for name, value in (("gamma", 2.0), ("delta", 2.0)):
        (benches / f"bench_{name}.py").write_text(
            f"def run():\n    return [{{'name': 'n', 'value': {value}, 'unit': 'ms', 'reference': None, "
            f"'ratio': None, 'notes': ''}}]\n")
    run_all.run_all(bench_dir=benches, out_dir=out)  # on disk: gamma 2.0, delta 2.0 (names unique to this test: modules are cached)
    committed = json.loads((out / "benchmarks.json").read_text())
    for row in committed["results"]:
        row["value"] = 1.0  # the committed report is older: 1.0 ms each
    monkeypatch.setattr(run_all, "load_previous", lambda path: committed)
    report = run_all.run_all(bench_dir=benches, out_dir=out, only=["delta"])
    gamma = next(r for r in report["results"] if r["bench"] == "gamma")
    assert gamma["value"] == 2.0  # the uncommitted run's row, not the committed one's
    assert [g["bench"] for g in report["regressions"]] == ["delta"]  # 1.0 -> 2.0 ms against the committed report


def test_matmul_bench_measures_real_throughput(monkeypatch: pytest.MonkeyPatch) -> None:
    """bench_matmul.run() with its size sweep cut to one small real measurement per dtype (fast)."""
    measured = bench_matmul.measure(sizes=(256,), repeats=3)
    assert set(measured) == {torch.float32, torch.bfloat16}
    assert all(0.1 < g[256] < 100_000 for g in measured.values())  # GFLOP/s: any real CPU lands in this range
    monkeypatch.setattr(bench_matmul, "_sweep", lambda: measured)
    rows = {r["name"]: run_all.validate_row(r) for r in bench_matmul.run()}
    assert set(rows) == {"matmul_fp32_peak", "matmul_bf16_peak"}
    assert rows["matmul_fp32_peak"]["unit"] == "GFLOP/s" and rows["matmul_fp32_peak"]["higher_is_better"]
    assert bench_matmul.matmul_gflops(torch.bfloat16) == measured[torch.bfloat16][256]
    bf16 = rows["matmul_bf16_peak"]
    assert bf16["reference"] == pytest.approx(measured[torch.float32][256], abs=0.05)
    assert bf16["ratio"] == pytest.approx(measured[torch.bfloat16][256] / measured[torch.float32][256], abs=0.01)


def test_targets_table_takes_the_worst_row_and_says_what_is_missing() -> None:
    from benchmarks.targets import render_targets

    rows = [
        {"bench": "heatmaps", "name": "heatmap_patchknn_knee_224", "value": 1.0, "ratio": 1.2,
         "stages_ms": {"forward": 90.0, "search": 10.0}},
        {"bench": "heatmaps", "name": "heatmap_patchknn_cr_1760", "value": 1.0, "ratio": 1.7,
         "stages_ms": {"forward": 100.0, "regions": 60.0}},
        {"bench": "heatmaps", "name": "heatmap_recon_cr_1760", "value": 1.0, "ratio": 9.0},
        {"bench": "app", "name": "next_sample_coreset_100000", "value": 0.2, "ratio": None},
        {"bench": "app", "name": "next_sample_hybrid_100000", "value": 0.6, "ratio": None},
        {"bench": "app", "name": "next_sample_hybrid_10000", "value": 9.0, "ratio": None},
        {"bench": "app", "name": "infer_http_vs_inprocess", "value": 1.09, "ratio": 1.05},
        {"bench": "app", "name": "infer_http_slicer_client_vs_inprocess", "value": 1.08, "ratio": None,
         "stages_ms": {"total": 104.0, "outside": 3.0}},
        {"bench": "app", "name": "infer_embedding_http_p50", "value": 108.0, "ratio": None},
        {"bench": "app", "name": "infer_server_stages_p50", "value": 104.0, "ratio": None,
         "stages_ms": {"parse": 2.0, "queue": 0.5, "handler": 100.0, "encode": 0.3, "total": 104.0, "outside": 4.0}},
    ]
    table = {line.split(" | ")[0].lstrip("| "): line for line in render_targets(rows) if line.startswith("| ")}
    knn = next(v for k, v in table.items() if k.startswith("patch-kNN"))
    assert "| 1.70 |" in knn and "**no**" in knn and "heatmap_patchknn_cr_1760" in knn and "regions 60.0 ms" in knn
    nxt = next(v for k, v in table.items() if k.startswith("next sample"))
    assert "| 0.60 s |" in nxt and "| yes |" in nxt  # the 10k row is not part of the 100k target
    http = next(v for k, v in table.items() if k.startswith("server `/infer`"))
    assert "| 1.080x |" in http and "**no**" in http  # OrthoFM's own client is the target row
    assert "handler takes 100.0 ms" in http and "server adds 4.0 ms" in http
    assert "3.0 ms with the Slicer client, 4.0 ms with httpx (httpx over in-process: 1.090x)" in http
    mri = next(v for k, v in table.items() if k.startswith("80-slice"))
    assert "not measured" in mri
    assert render_targets([]) == []
