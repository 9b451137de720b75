"""``orthofm probe-backbone``: frozen-feature quality of a backbone against random-init and raw pixels."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "probe-backbone",
        help="logistic-regression probe (train -> val) of a backbone vs a random-init twin and raw pixels",
    )
    p.add_argument("--weights", required=True, help="any checkpoint `orthofm weights inspect` understands")
    p.add_argument("--train", required=True, help="folder-per-class (or CSV) training labels")
    p.add_argument("--val", required=True, help="folder-per-class (or CSV) validation labels")
    p.add_argument("--cache", default="runs/embeddings", help="embedding cache folder")
    p.add_argument("--baselines", default="random_init,pixels64", help="comma list; '' for none")
    p.add_argument("--readouts", default=None,
                   help="probe these readouts instead of the product's cached feature, e.g. "
                        "cls+mean,cls4+mean,cls+grid4,block7:cls+mean (docs/pretraining.md, OrthoFM's default model)")
    p.add_argument("--input-size", type=int, default=None, help="resize images to this canvas instead (pixels)")
    p.add_argument("--out", help="write the results as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from orthofm.evaluate.backbone_probe import Readout, compare_to_baselines
    from orthofm.utils.atomic import atomic_write_text
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    baselines = tuple(b for b in args.baselines.split(",") if b)
    try:
        readouts = [Readout.parse(t) for t in args.readouts.split(",") if t.strip()] if args.readouts else None
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    results = compare_to_baselines(args.weights, args.train, args.val, args.cache, baselines, readouts,
                                   args.input_size)
    for r in results:
        m = r.metrics
        print(f"{r.name:40s} {r.features:20s} acc {m['accuracy']:.3f}  qwk {m.get('qwk', float('nan')):.3f}  "
              f"macro-F1 {m['macro_f1']:.3f}  ECE {m['ece']:.3f}")
    if args.out:
        atomic_write_text(args.out, json.dumps([asdict(r) for r in results], indent=2, default=float))
    return 0
