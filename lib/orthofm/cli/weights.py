"""``orthofm weights inspect|convert``: what a weights file is, and turning it into an OrthoFM folder."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="inspect or convert backbone weights (DINOv3, SKELEX, RAD-DINO, ...)")
    sub = p.add_subparsers(title="weights commands", dest="weights_command", metavar="<action>", required=True)

    ins = sub.add_parser("inspect", help="show format, architecture, parameter count and model card of PATH")
    ins.add_argument("path", help="weights file (.pth/.pt/.bin/.safetensors) or folder (OrthoFM / Hugging Face)")
    ins.add_argument("--arch", default=None, help="override the inferred timm architecture")
    ins.add_argument("--json", action="store_true", help="print machine-readable JSON")
    ins.set_defaults(func=run_inspect)

    conv = sub.add_parser("convert", help="convert PATH to an OrthoFM folder OUT (backbone.safetensors + model card)")
    conv.add_argument("path", help="weights file or folder in any supported format")
    conv.add_argument("out", help="output folder (created; an existing OrthoFM folder is updated in place)")
    conv.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16", help="storage precision (default fp16)")
    conv.add_argument("--arch", default=None, help="override the inferred timm architecture")
    conv.add_argument("--card", default=None, metavar="JSON",
                      help="JSON file with extra model-card sections (data, recipe, compute, metrics, ...)")
    conv.set_defaults(func=run_convert)


def run_inspect(args: argparse.Namespace) -> int:
    from orthofm.models import inspect_weights

    report = inspect_weights(args.path, arch=args.arch)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0 if report.get("loads") else 1
    print(f"path          {report['path']}")
    print(f"format        {report['description']}")
    for note in report.get("notes", []):
        print(f"note          {note}")
    if not report.get("loads"):
        print(f"loads         NO: {report['error']}", file=sys.stderr)
        return 1
    n = report["num_params"]
    print(f"architecture  {report['architecture']}  [{report['backbone_class']}]")
    print(f"features      embed_dim {report['embed_dim']}, patch {report['patch_size']}, "
          f"{report['num_registers']} register(s), MAE decoder: {'yes' if report['has_mae_decoder'] else 'no'}")
    print(f"parameters    {n['backbone']:,} backbone" + (f" + {n['mae_decoder']:,} decoder" if n["mae_decoder"] else ""))
    pre = report["preprocess"]
    print(f"preprocess    mean {tuple(pre['mean'])}, std {tuple(pre['std'])}, input {pre['input_size']}")
    cfg = report.get("pretrained_cfg") or {}
    if cfg:
        print(f"weights       {cfg.get('title')}")
        print(f"source        {cfg.get('source')}")
        print(f"licence       {cfg.get('license')}")
    card = report.get("model_card")
    if card:
        extra = {k: v for k, v in card.items() if k not in ("backbone", "files", "pretrained_cfg")}
        print("model card    " + json.dumps(extra, indent=2, default=str).replace("\n", "\n              "))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import torch

    from orthofm.models import describe_arch, load_backbone, save_orthofm

    card = {}
    if args.card:
        with open(args.card) as fh:
            card = json.load(fh)
        if not isinstance(card, dict):
            raise ValueError(f"{args.card}: the card must be a JSON object")
    card.setdefault("source", {"converted_from": str(args.path)})
    bb = load_backbone(args.path, args.arch)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    out = save_orthofm(bb, args.out, card, dtype=dtype)
    print(f"wrote {out} ({describe_arch(bb.config)}, {args.dtype})")
    return 0
