"""Run every ``benchmarks/bench_*.py`` and write ``docs/benchmarks.md`` + ``docs/benchmarks.json``.

Each bench module exposes ``run() -> list[dict]``; a row has ``name``, ``value``, ``unit``, ``reference``,
``ratio`` (value / reference; None when there is no reference), ``notes`` and optionally
``higher_is_better`` (default: True, except for time and size units) and ``compare`` (a side-by-side entry:
rows sharing its ``what`` become one line of a table beside another system's measured behaviour, e.g. MONAI
Label 0.8.5 for ``bench_app``; see ``render_comparisons``). The report carries the machine
description, because a timing on a shared 2-core box means little without the CPU, its load and versions.

Regression check: every row is compared with the same row in the last *committed* ``docs/benchmarks.json``
(``git show HEAD:docs/benchmarks.json``; the file on disk when git has none). A row more than 20% worse is
flagged in the output and the report, but never fails the run: machines and their load differ. A bench
module that crashes is recorded and makes the run exit 1, since that is a bug, not noise. A partial run
(``--only``) keeps the other benches' rows from the report on disk, so an uncommitted partial run is not lost.

Usage: ``python benchmarks/run_all.py [--only matmul,heads] [--out-dir docs]`` (``make bench``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from orthofm.utils.atomic import atomic_write_text
from orthofm.utils.log import configure_logging
from orthofm.utils.machine import describe_machine
from orthofm.utils.runtime import configure_threads

try:  # imported as the package ``benchmarks`` (tests) or run as a script from this folder (make bench)
    from benchmarks.targets import render_targets
except ImportError:
    from targets import render_targets

log = logging.getLogger("orthofm.benchmarks")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
REQUIRED_KEYS = ("name", "value", "unit", "reference", "ratio", "notes")
LOWER_IS_BETTER_UNITS = {"s", "ms", "us", "µs", "ns", "min", "b", "kb", "mb", "gb", "kib", "mib", "gib"}
REGRESSION_THRESHOLD = 0.20


@dataclass
class BenchOutcome:
    """What one bench module produced: its rows, or the error that stopped it."""

    bench: str
    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def discover(bench_dir: Path = BENCH_DIR, only: Sequence[str] | None = None) -> dict[str, Path]:
    """``{short name: path}`` of every ``bench_<name>.py`` in ``bench_dir`` (optionally filtered)."""
    found = {p.stem.removeprefix("bench_"): p for p in sorted(bench_dir.glob("bench_*.py"))}
    if only:
        unknown = sorted(set(only) - set(found))
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {unknown}; available: {sorted(found)}")
        found = {k: v for k, v in found.items() if k in only}
    return found


def _import(name: str, path: Path) -> ModuleType:
    """Import a bench file as ``benchmarks.bench_<name>`` so benches can import each other."""
    module_name = f"benchmarks.{path.stem}" if path.parent == BENCH_DIR else f"_bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def validate_row(row: object) -> dict:
    """Check one result row; fill ``higher_is_better`` from the unit when the bench did not say."""
    if not isinstance(row, dict):
        raise TypeError(f"a benchmark row must be a dict, got {type(row).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"benchmark row {row.get('name', row)!r} lacks keys {missing}")
    if not isinstance(row["value"], (int, float)) or isinstance(row["value"], bool):
        raise TypeError(f"benchmark row {row['name']!r}: value must be a number, got {row['value']!r}")
    out = dict(row)
    out.setdefault("higher_is_better", str(row["unit"]).strip().lower() not in LOWER_IS_BETTER_UNITS)
    return out


def run_bench(name: str, path: Path) -> BenchOutcome:
    """Import and run one bench module; errors are captured, not raised."""
    outcome = BenchOutcome(bench=name)
    start = time.perf_counter()
    try:
        rows = _import(name, path).run()
        outcome.rows = [validate_row(r) for r in rows]
    except Exception:  # noqa: BLE001 - a crashing bench is reported, the others still run
        outcome.error = traceback.format_exc(limit=5)
    outcome.seconds = round(time.perf_counter() - start, 2)
    return outcome


def load_previous(json_path: Path, repo_root: Path = REPO_ROOT) -> dict | None:
    """The last committed report (``git show HEAD:<path>``), else the file on disk, else None."""
    try:
        rel = json_path.resolve().relative_to(repo_root.resolve())
        shown = subprocess.run(
            ["git", "-C", str(repo_root), "show", f"HEAD:{rel.as_posix()}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if shown.returncode == 0:
            return json.loads(shown.stdout)
    except (ValueError, OSError, subprocess.SubprocessError):
        pass  # not inside the repo, no git, or unparsable: fall back to the file on disk
    if json_path.exists():
        try:
            return json.loads(json_path.read_text())
        except json.JSONDecodeError:
            log.warning("ignoring unreadable previous report %s", json_path)
    return None


def find_regressions(previous: dict | None, outcomes: list[BenchOutcome],
                     threshold: float = REGRESSION_THRESHOLD) -> list[dict]:
    """Rows whose performance fell by more than ``threshold`` against ``previous`` (same bench + name + unit)."""
    if not previous:
        return []
    old = {(r.get("bench"), r.get("name"), r.get("unit")): r for r in previous.get("results", [])}
    flagged = []
    for outcome in outcomes:
        for row in outcome.rows:
            before = old.get((outcome.bench, row["name"], row["unit"]))
            if before is None or not isinstance(before.get("value"), (int, float)):
                continue
            new, prev = float(row["value"]), float(before["value"])
            if new <= 0 or prev <= 0:
                continue
            performance = new / prev if row["higher_is_better"] else prev / new  # < 1 means worse
            if performance < 1.0 - threshold:
                flagged.append({
                    "bench": outcome.bench, "name": row["name"], "unit": row["unit"],
                    "previous": prev, "current": new, "relative_performance": round(performance, 3),
                })  # fmt: skip
    return flagged


def _git_commit(repo_root: Path = REPO_ROOT) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo_root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def build_report(outcomes: list[BenchOutcome], machine: dict, regressions: list[dict]) -> dict:
    """The JSON document written to ``docs/benchmarks.json``."""
    return {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "command": "make bench  (python benchmarks/run_all.py)",
        "machine": machine,
        "results": [{"bench": o.bench, **row} for o in outcomes for row in o.rows],
        "bench_seconds": {o.bench: o.seconds for o in outcomes},
        "errors": {o.bench: o.error for o in outcomes if o.error},
        "regressions": regressions,
    }


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


COMPARISON_TITLES = {
    "monailabel_0.8.5": ("OrthoFM's server beside MONAI Label 0.8.5",
                         ("Issue 10's table. The OrthoFM column is this run (`bench_app`, a real server on 127.0.0.1);"
                         " the MONAI Label column quotes `../shared/reference/monailabel-0.8.5-measured.md` (its row"
                         " numbers in brackets), measured on a similar 2-core machine with a sample app: same"
                         " questions, different runs, and for throughput a different task, so compare behaviour"
                         " (errors, blocking, losses) more than raw speed."),
                         "MONAI Label 0.8.5 (measured reference)"),
}


def _cell(row: dict, fmt: str) -> str:
    try:
        return fmt.format(**row)
    except (KeyError, ValueError, TypeError, IndexError):  # a malformed format must not lose the report
        return f"{row['value']} {row['unit']}"


def render_comparisons(results: list[dict]) -> list[str]:
    """Markdown tables from rows with a ``compare`` entry, one table per ``compare['table']``.

    Rows that share ``what`` (e.g. throughput, p50 and p95 at one client count) fill one line, in row order;
    the first non-empty ``monai_label`` / ``goal`` of the group fills those columns."""
    tables: dict[str, dict[str, dict]] = {}
    for r in results:
        c = r.get("compare")
        if not isinstance(c, dict) or "what" not in c:
            continue
        line = tables.setdefault(str(c.get("table", "comparison")), {}).setdefault(
            str(c["what"]), {"cells": [], "reference": "", "goal": ""})
        line["cells"].append(_cell(r, str(c.get("cell", "{value} {unit}"))))
        line["reference"] = line["reference"] or str(c.get("monai_label", ""))
        line["goal"] = line["goal"] or str(c.get("goal", ""))
    lines: list[str] = []
    for table, rows in tables.items():
        title, intro, ref_col = COMPARISON_TITLES.get(table, (table, "", "reference"))
        lines += [f"## {title}", "", intro, "", f"| measured | OrthoFM (this run) | {ref_col} | goal |",
                  "|---|---|---|---|"]
        for what, line in rows.items():
            lines.append("| " + " | ".join(_fmt(v) or "–" for v in (
                what, ", ".join(line["cells"]), line["reference"], line["goal"])) + " |")
        lines.append("")
    return lines


def machine_label(machine: dict) -> str:
    """The part of a machine description that changes what a timing means: the CPU and whether it runs bf16."""
    return f"{machine.get('cpu_model', '?')} (native bf16: {machine.get('native_bf16', '?')})"


def _partial_lines(report: dict) -> list[str]:
    base, reruns = report.get("base_run"), report.get("partial_reruns")
    if not base or not reruns:
        return []
    machines = report.get("rerun_machines") or {}
    mixed = any(machines.get(k, base.get("machine")) != base.get("machine") for k in reruns)

    def on(label: str | None) -> str:  # name the machine only when the rows come from more than one
        return f" on {label}" if mixed and label else ""

    return [(f"- partial re-runs: {', '.join(f'`{k}` at {v}{on(machines.get(k))}' for k, v in reruns.items())}"
             f" (the lines above describe the latest of them); every other bench's rows come from the full run"
             f" generated {base['generated']}{on(base.get('machine'))} (commit `{base['git_commit']}`, load average"
             f" at start {base['load_average_1_5_15min']})")]


def render_markdown(report: dict) -> str:
    """Human-readable ``docs/benchmarks.md`` from the report dict."""
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python benchmarks/run_all.py`); do not edit by hand. Each area describes",
        "its own benchmarks in its doc page. Numbers were measured on the machine below at the time shown;",
        "on a shared machine they move with its load, so compare ratios to the matmul reference, not raw times.",
        "",
        f"- generated: {report['generated']} (commit `{report['git_commit']}`)",
        (f"- CPU: {m['cpu_model']}, {m['available_cpus']} usable of {m['logical_cpus']} logical CPUs,"
         f" torch threads {m['torch_threads']}"),
        (f"- ISA flags: {' '.join(m['isa_flags']) or 'none detected'}; native bf16: {m['native_bf16']};"
         f" torch CPU capability: {m['torch_cpu_capability']}; inference dtype: {m['best_inference_dtype']},"
         f" engine: {m.get('inference_engine', 'torch')}"),
        f"- load average (1/5/15 min) at start: {m['load_average_1_5_15min']}",
        *_partial_lines(report),
        f"- {m['os']}, Python {m['python']}",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()),
        "",
        "## Results",
        "",
        "| bench | name | value | unit | reference | ratio | notes |",
        "|---|---|---:|---|---:|---:|---|",
    ]
    for r in report["results"]:
        lines.append("| " + " | ".join(_fmt(r[k]) for k in ("bench", "name", "value", "unit", "reference",
                                                                 "ratio", "notes")) + " |")
    comparisons = render_comparisons(report["results"])
    if comparisons:
        lines += [""] + comparisons[:-1]
    targets = render_targets(report["results"])
    if targets:
        lines += [""] + targets[:-1]
    lines += ["", "## Regressions (> 20% worse than the last committed report)", ""]
    if report["regressions"]:
        lines += [f"- {g['bench']}/{g['name']}: {g['previous']} -> {g['current']} {g['unit']}"
                  f" (relative performance {g['relative_performance']})" for g in report["regressions"]]
    else:
        lines.append("None.")
    if report["errors"]:
        lines += ["", "## Errors", ""]
        for bench, err in report["errors"].items():
            lines += [f"### {bench}", "", "```", err.rstrip(), "```", ""]
    lines += ["", "Time per bench module (s): "
              + ", ".join(f"{k} {v}" for k, v in report["bench_seconds"].items()), ""]
    return "\n".join(lines)


def _read_report(json_path: Path) -> dict | None:
    try:
        return json.loads(json_path.read_text()) if json_path.exists() else None
    except (OSError, json.JSONDecodeError):
        log.warning("ignoring unreadable report %s", json_path)
        return None


def merge_partial(report: dict, previous: dict, only: Sequence[str]) -> None:
    """Keep the other benches' rows from ``previous`` and say so, so the header never passes off a partial
    re-run (its time, load and commit) as the origin of every row."""
    kept = [r for r in previous.get("results", []) if r.get("bench") not in set(only)]
    report["results"] = kept + report["results"]
    seconds = {k: v for k, v in previous.get("bench_seconds", {}).items() if k not in set(only)}
    report["bench_seconds"] = {**seconds, **report["bench_seconds"]}
    previous_machine = machine_label(previous.get("machine", {}))
    base = previous.get("base_run") or {
        "generated": previous.get("generated"), "git_commit": previous.get("git_commit"),
        "load_average_1_5_15min": previous.get("machine", {}).get("load_average_1_5_15min"),
        "machine": previous_machine}
    rerun = sorted(set(only) | set((previous.get("partial_reruns") or {}).keys()))
    report["base_run"] = base
    report["partial_reruns"] = {**(previous.get("partial_reruns") or {}),
                                **{name: report["generated"] for name in only}}
    report["partial_reruns"] = {k: report["partial_reruns"][k] for k in rerun}
    # a re-run on another machine (sessions move between hosts) must not pass its CPU off as every row's
    machines = {k: previous_machine for k in previous.get("partial_reruns") or {}}  # older reports: their header's
    machines.update(previous.get("rerun_machines") or {})
    machines.update({name: machine_label(report["machine"]) for name in only})
    report["rerun_machines"] = {k: machines[k] for k in rerun}


def run_all(bench_dir: Path = BENCH_DIR, out_dir: Path = REPO_ROOT / "docs",
            only: Sequence[str] | None = None) -> dict:
    """Run the benches, compare with the previous report, write both reports; returns the report."""
    configure_threads()
    benches = discover(bench_dir, only)
    json_path, md_path = out_dir / "benchmarks.json", out_dir / "benchmarks.md"
    previous = load_previous(json_path)
    machine = describe_machine()
    outcomes = []
    for i, (name, path) in enumerate(benches.items(), 1):
        log.info("[%d/%d] bench %s ...", i, len(benches), name)
        outcome = run_bench(name, path)
        outcomes.append(outcome)
        if outcome.error:
            log.error("bench %s failed after %.1f s:\n%s", name, outcome.seconds, outcome.error)
        else:
            log.info("bench %s: %d rows in %.1f s", name, len(outcome.rows), outcome.seconds)
    regressions = find_regressions(previous, outcomes)
    for g in regressions:
        log.warning("REGRESSION %s/%s: %s -> %s %s (relative performance %.2f)", g["bench"], g["name"],
                    g["previous"], g["current"], g["unit"], g["relative_performance"])
    report = build_report(outcomes, machine, regressions)
    on_disk = _read_report(json_path)
    if only and (on_disk or previous):  # a partial run keeps the other benches' latest rows (on disk, else
        merge_partial(report, on_disk or previous, only)  # committed): an uncommitted partial run is not lost
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    log.info("wrote %s and %s", md_path, json_path)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated bench names (e.g. matmul,heads)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "docs", help="where the reports go")
    args = parser.parse_args(argv)
    configure_logging()
    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    report = run_all(out_dir=args.out_dir, only=only)
    for r in report["results"]:
        ratio = f"  ratio {r['ratio']}" if r["ratio"] is not None else ""
        print(f"{r['bench']:>12s} {r['name']:32s} {r['value']:>12} {r['unit']}{ratio}")
    print(f"{len(report['regressions'])} regression(s) flagged, {len(report['errors'])} bench error(s)")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))  # so bench modules can `import benchmarks.bench_matmul`
    sys.exit(main())
