"""``orthofm evaluate``: the label-efficiency protocol and its report (quick: CI smoke; cpu: a 2-core CPU; full)."""

from __future__ import annotations

import argparse
import json


def _floats(text: str) -> tuple[float, ...]:
    """``"1,5,10"`` (percent) -> (0.01, 0.05, 0.1)."""
    values = tuple(float(v) / 100 for v in text.split(",") if v.strip())
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected percentages in (0, 100], got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip() and v.strip() != "none")


def _precision_overrides(items: list[str]) -> dict[str, str]:
    """``["vit_random@100=fp32"]`` -> ``{"vit_random@1": "fp32"}`` (fractions in percent on the command line)."""
    out = {}
    for item in items:
        run, sep, precision = item.partition("=")
        method, at, percent = run.partition("@")
        if not (sep and at and method.strip() and precision.strip()):
            raise SystemExit(f"--baseline-precision-for {item!r}: expected BASELINE@PERCENT=PRECISION, "
                             f"e.g. vit_random@100=fp32")
        (fraction,) = _floats(percent)
        out[f"{method.strip()}@{fraction:g}"] = precision.strip()
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="label-efficiency protocol: heads vs supervised baselines -> report")
    p.add_argument("--train", required=True, help="training labels (labels.csv or folder per class)")
    p.add_argument("--test", required=True, help="test labels, used only for scoring")
    p.add_argument("--out", required=True, help="report folder (summary.md, PNGs, results.json)")
    p.add_argument("--weights", default=None, help="backbone weights (default: the OrthoFM default model folder)")
    p.add_argument("--task", default="task", help="task name shown in the report")
    p.add_argument("--preset", choices=("quick", "cpu", "full"), default="full",
                   help="quick: minutes, a few hundred images (CI smoke); cpu: every frozen-feature head, budgeted "
                        "fine-tuning and baselines (docs/heads.md); full: the documented protocol")
    p.add_argument("--fractions", type=_floats, help="label fractions in percent, e.g. 1,5,10,25,50,100")
    p.add_argument("--seeds", type=int, help="seeds per fraction")
    p.add_argument("--heads", type=_names, help="probe,knn,mlp,finetune (or none)")
    p.add_argument("--baselines", type=_names, help="resnet18,vit_random (or none)")
    p.add_argument("--baseline-fractions", type=_floats, help="fractions (percent) for the baselines")
    p.add_argument("--baseline-seeds", type=int)
    p.add_argument("--baseline-max-minutes", type=float, help="wall-clock safety budget per baseline training")
    p.add_argument("--baseline-max-cpu-minutes", type=float,
                   help="process CPU-time budget per baseline training (all threads; load-independent)")
    p.add_argument("--baseline-image-size", type=int)
    p.add_argument("--baseline-precision", choices=("auto", "bf16", "fp32"),
                   help="training precision of the baselines (default auto: bf16 where the CPU runs it natively, "
                        "else fp32); part of a run's cache key")
    p.add_argument("--baseline-precision-for", action="append", default=[], metavar="BASELINE@PERCENT=PRECISION",
                   help="another precision for one baseline at one fraction, e.g. vit_random@100=fp32 for a run trained "
                        "on a machine without native bf16 (repeatable; part of that run's cache key)")
    p.add_argument("--baseline-cache", default=None,
                   help="folder of finished baseline runs shared between reports (default: ~/.cache/orthofm/baselines)")
    p.add_argument("--baselines-cached-only", action="store_true",
                   help="never train a baseline: use cached runs and list the missing ones as pending")
    p.add_argument("--max-train-images", type=int, help="patient-grouped cap on the training split")
    p.add_argument("--max-test-images", type=int, help="patient-grouped cap on the test split")
    p.add_argument("--params", default=None, help='JSON head settings per kind, e.g. \'{"finetune": {"n_blocks": 2}}\'')
    p.add_argument("--cache", default=None, help="embedding store folder (default: ~/.cache/orthofm/embeddings)")
    p.add_argument("--no-resume", action="store_true", help="start over instead of reusing results.json runs")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: render the report from the finished runs in results.json (lists the rest)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import shlex
    import sys

    from orthofm.evaluate.baselines import BaselineConfig
    from orthofm.evaluate.protocol import PRESETS, ProtocolConfig, run_protocol
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    settings = dict(PRESETS[args.preset])
    overrides = {"fractions": args.fractions, "seeds": args.seeds, "heads": args.heads, "baselines": args.baselines,
                 "baseline_fractions": args.baseline_fractions, "baseline_seeds": args.baseline_seeds,
                 "max_train_images": args.max_train_images, "max_test_images": args.max_test_images}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if args.fractions is not None:
        settings.pop("head_fractions", None)
    if args.seeds is not None:
        settings.pop("head_seeds", None)
    if args.baseline_fractions is not None:
        settings.pop("baseline_method_fractions", None)
    if args.params:
        settings["head_params"] = {**settings.get("head_params", {}), **json.loads(args.params)}
    baseline = settings.get("baseline") or BaselineConfig()
    if args.baseline_max_minutes is not None:
        baseline = dataclasses.replace(baseline, max_minutes=args.baseline_max_minutes)
    if args.baseline_max_cpu_minutes is not None:
        baseline = dataclasses.replace(baseline, max_cpu_minutes=args.baseline_max_cpu_minutes)
    if args.baseline_image_size is not None:
        baseline = dataclasses.replace(baseline, image_size=args.baseline_image_size)
    if args.baseline_precision is not None:
        baseline = dataclasses.replace(baseline, precision=args.baseline_precision)
    settings["baseline"] = baseline
    config = ProtocolConfig(train=args.train, test=args.test, out=args.out, weights=args.weights, task=args.task,
                            cache=args.cache, resume=not args.no_resume, baseline_cache=args.baseline_cache,
                            baselines_cached_only=args.baselines_cached_only, preset=args.preset,
                            baseline_precision_for=_precision_overrides(args.baseline_precision_for),
                            report_only=args.report_only,
                            command="orthofm " + " ".join(shlex.quote(a) for a in sys.argv[1:]), **settings)
    data = run_protocol(config)
    print(f"{len(data['runs'])} runs; report: {args.out}/summary.md")
    return 0
