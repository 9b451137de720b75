"""Issue 11's performance targets, read off a benchmark report: measured value, goal, met or not, and what limits it.

Each target names the rows it is read from; the worst row counts (e.g. the slowest patch-kNN case). "What
limits it" is read from the same rows' notes (stage times, CPU share) where the bench records them, so the
table never states a cause that was not measured in the run.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    what: str
    rows: tuple[str, ...]  # "bench/name", shell-style patterns allowed ("app/next_sample_*_100000")
    field: str  # "ratio" or "value"
    goal: float
    at_most: bool  # True: the measured value must be <= goal
    fmt: str
    limits: Callable[[list[dict], list[dict]], str] | None = None  # (its rows, the whole report)


def _stages(rows: list[dict], results: list[dict]) -> str:
    worst = max(rows, key=lambda r: r.get("ratio") or 0)
    stages = worst.get("stages_ms") or {}
    top = sorted(stages.items(), key=lambda kv: -kv[1])[:3]
    return f"worst case `{worst['name']}`: " + ", ".join(f"{k} {v} ms" for k, v in top) if top else ""


def _http(rows: list[dict], results: list[dict]) -> str:
    split = next((r.get("stages_ms") for r in _matching(results, "app/infer_server_stages_p50")), None)
    if not split:
        return "no Server-Timing split in this report (re-run `bench_app`)"
    handler, total, outside = split.get("handler", 0.0), split.get("total", 0.0), split.get("outside", 0.0)
    others = ", ".join(f"{k} {split[k]:.1f}" for k in ("parse", "queue", "encode") if k in split)
    slicer = next((r.get("stages_ms") for r in _matching(results, "app/infer_http_slicer_client_vs_inprocess")), {})
    generic = next((r["value"] for r in _matching(results, "app/infer_http_vs_inprocess")), None)
    text = (f"the handler takes {handler:.1f} ms in the server (p50); the server adds {total - handler:.1f} ms around "
            f"it ({others})")
    if slicer:
        text += f"; outside the server: {slicer.get('outside', 0.0):.1f} ms with the Slicer client"
    text += f", {outside:.1f} ms with httpx"
    if generic is not None:
        text += f" (httpx over in-process: {generic:.3f}x)"
    return text + " (Server-Timing medians)"


TARGETS = (
    Target("batch embedding of 224 px radiographs (default engine), share of the bf16 matmul peak",
           ("engines/default_engine_224_b8_gflops",), "ratio", 0.5, False, "{:.1%}"),
    Target("server `/infer` latency over the in-process call, with OrthoFM's own (Slicer) client",
           ("app/infer_http_slicer_client_vs_inprocess",), "value", 1.05, True, "{:.3f}x", _http),
    Target("patch-kNN heatmap, in forward passes (worst of knee, wrist, 1760 px CR, MRI)",
           ("heatmaps/heatmap_patchknn_*",), "ratio", 1.5, True, "{:.2f}", _stages),
    Target("next sample over 100k cached embeddings (slowest strategy)", ("app/next_sample_*_100000",), "value",
           5.0, True, "{:.2f} s"),
    Target("80-slice 512x512 MRI graded and heatmapped", ("volume/mri_80x512x512_grade_and_heatmap",), "value",
           30.0, True, "{:.1f} s"),
    Target("server resident memory with the default model (after a burst)", ("app/server_rss_after_burst",),
           "value", 1536.0, True, "{:.0f} MB"),
)


def _matching(results: list[dict], pattern: str) -> list[dict]:
    bench, name = pattern.split("/", 1)
    return [r for r in results if r.get("bench") == bench and fnmatch.fnmatchcase(str(r.get("name", "")), name)]


def _numeric(t: Target, rows: list[dict]) -> list[dict]:
    return [r for r in rows if isinstance(r.get(t.field), (int, float))]


def render_targets(results: list[dict]) -> list[str]:
    """Markdown lines of the targets table (empty when no target's rows are in the report)."""
    lines = ["## Issue 11's targets", "",
             ("Read off the rows above (the worst row where a target covers several). One shared backbone for every "
              "task is a design property of the app (`lib/runtime.py` holds one backbone; the RSS row shows its cost)."),
             "", "| target | measured | goal | met | what limits it |", "|---|---|---|---|---|"]
    shown = 0
    for t in TARGETS:
        rows = _numeric(t, [r for p in t.rows for r in _matching(results, p)])
        if not rows:
            lines.append(f"| {t.what} | not measured in this report | {t.fmt.format(t.goal)} | – | – |")
            continue
        pick = max if t.at_most else min
        value = pick(float(r[t.field]) for r in rows)
        met = value <= t.goal if t.at_most else value >= t.goal
        limits = t.limits(rows, results) if t.limits else ""
        lines.append(f"| {t.what} | {t.fmt.format(value)} | {'<=' if t.at_most else '>='} {t.fmt.format(t.goal)} "
                     f"| {'yes' if met else '**no**'} | {limits or '–'} |")
        shown += 1
    return lines + [""] if shown else []
