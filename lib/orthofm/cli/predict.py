"""``orthofm predict``: grade every image of a folder with a trained head -> CSV (path, label, p_<class>...)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="predict a task's label and class probabilities for a folder")
    p.add_argument("--task", required=True, help="task name (head at <weights>/heads/<task> unless --head)")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--weights", default=None, help="backbone weights (default: the OrthoFM default model folder)")
    p.add_argument("--head", default=None, help="head folder (default: <weights>/heads/<task>)")
    p.add_argument("--series", action="store_true", help="treat every sub-folder as one DICOM series / volume")
    p.add_argument("--cache", default=None, help="embedding store folder (default: ~/.cache/orthofm/embeddings)")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orthofm.heads.predictor import predict_images
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    path, preds = predict_images(args.task, args.images, args.out, weights=args.weights, head_dir=args.head,
                                 cache=args.cache, series=args.series, batch_size=args.batch_size)
    print(f"{len(preds.index)} predictions -> {path}")
    return 0
