"""``orthofm train-head``: fit a calibrated head for one task on (a fraction of) labelled images."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-head", help="train a probe / kNN / MLP / fine-tuned head for a task")
    p.add_argument("--task", required=True, help="task name, e.g. knee_kl (head saved under <model>/heads/<task>)")
    p.add_argument("--labels", required=True, help="labels.csv (path,label[,patient]) or a folder per class")
    p.add_argument("--fraction", type=float, default=1.0, help="fraction of the labels to use (patient-grouped)")
    p.add_argument("--weights", default=None, help="backbone weights (default: the OrthoFM default model folder)")
    p.add_argument("--out", default=None, help="head folder (default: <weights>/heads/<task>)")
    p.add_argument("--head", default="probe",
                   help="head kind(s), comma separated: probe, knn, mlp, finetune (several: the best is kept)")
    p.add_argument("--val-labels", default=None,
                   help="separate validation labels used only to choose among --head kinds (recorded in the card)")
    p.add_argument("--seed", type=int, default=0)
    ordinal = p.add_mutually_exclusive_group()
    ordinal.add_argument("--ordinal", dest="ordinal", action="store_true", default=None,
                         help="ordinal classes (default: yes when class names are consecutive integers)")
    ordinal.add_argument("--no-ordinal", dest="ordinal", action="store_false")
    p.add_argument("--decode", choices=("argmax", "expected"), default="argmax",
                   help="label = most probable class, or the rounded expected grade (ordinal)")
    p.add_argument("--params", default="{}", help='JSON head settings per kind, e.g. \'{"mlp": {"hidden": 512}}\'')
    p.add_argument("--cache", default=None, help="embedding store folder (default: ~/.cache/orthofm/embeddings)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orthofm.heads.train import TrainHeadConfig, train_task_head
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--params is not valid JSON: {exc}") from exc
    cfg = TrainHeadConfig(
        task=args.task, labels=args.labels, fraction=args.fraction, weights=args.weights, out=args.out,
        kinds=tuple(k.strip() for k in args.head.split(",") if k.strip()), seed=args.seed,
        val_labels=args.val_labels, ordinal=args.ordinal, decode=args.decode, cache=args.cache, head_params=params,
    )
    head, folder = train_task_head(cfg)
    shown = head.card.metrics.get("val") or head.card.metrics.get("train_out_of_sample") or {}
    summary = ", ".join(f"{k} {v:.3f}" for k, v in shown.items() if isinstance(v, float) and k != "n")
    print(f"{head.card.kind} head for {args.task!r} saved to {folder} (T={head.card.temperature:.3f}; {summary})")
    return 0
