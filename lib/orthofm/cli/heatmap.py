"""``orthofm heatmap``: zero-shot abnormality heatmaps; ``heatmap build-bank`` and ``heatmap evaluate``."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
from pathlib import Path

_DEFAULT_MODEL = Path(__file__).resolve().parents[3] / "monailabel_app" / "model" / "orthofm_vits16"


def _default_backbone() -> str | None:
    env = os.environ.get("ORTHOFM_BACKBONE")
    if env:
        return env
    return str(_DEFAULT_MODEL) if _DEFAULT_MODEL.is_dir() else None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone",
        default=None,
        help="backbone folder or checkpoint (default: $ORTHOFM_BACKBONE, else the shipped default model)",
    )
    p.add_argument("--anatomy", default="knee", help="anatomy of the normal bank (default: knee)")
    p.add_argument("--size", type=int, default=None, help="model canvas in pixels (default: the backbone's)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "heatmap",
        help="zero-shot abnormality heatmaps (MAE reconstruction error, patch novelty vs a normal bank)",
        description="Write <name>_heatmap.nrrd (float, the input's geometry), <name>_heatmap.json (score and "
        "top regions in pixel and LPS coordinates) and optionally a PNG overlay for every image in --images. "
        "Sub-commands: `heatmap build-bank` makes a normal bank, `heatmap evaluate` measures maps on the "
        "knee set.",
    )
    _common(p)
    p.add_argument("--images", help="an image, a DICOM series folder, or a folder of images / series folders")
    p.add_argument("--out", help="output folder")
    p.add_argument("--method", choices=["recon", "patchknn", "both"], default="patchknn")
    p.add_argument(
        "--normal-bank",
        dest="normal_bank",
        help="bank folder (default: <backbone folder>/banks/<anatomy> if present)",
    )
    p.add_argument("--format", choices=["nrrd", "nifti"], default="nrrd")
    p.add_argument(
        "--png", action="store_true", help="also write a PNG overlay (volumes: the top region's slice)"
    )
    p.add_argument("--sigma", type=float, default=4.0, help="Gaussian smoothing in model-canvas pixels")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="region threshold in map units (default: 1 = normal 99th percentile when calibrated)",
    )
    p.set_defaults(func=run_heatmaps)

    sub = p.add_subparsers(dest="heatmap_action", metavar="{build-bank,evaluate}")
    b = sub.add_parser(
        "build-bank",
        help="build a normal memory bank from images marked normal",
        description="Patch tokens of normal images -> greedy k-centre coreset -> a bank folder "
        "(features.npy + bank.json card with calibration), written atomically.",
    )
    _common(b)
    b.add_argument(
        "--images", required=True, help="folder of normal images (for knees: KL 0 of the training split)"
    )
    b.add_argument("--out", required=True, help="bank folder to write, e.g. <model>/banks/knee")
    b.add_argument("--coreset-ratio", dest="coreset_ratio", type=float, default=0.1)
    b.add_argument(
        "--max-patches",
        dest="max_patches",
        type=int,
        default=None,
        help="cap on kept patches (bank size = cap x dim x 2 bytes)",
    )
    b.add_argument(
        "--calibration-fraction",
        dest="calibration_fraction",
        type=float,
        default=0.1,
        help="normal images held out to calibrate thresholds and method combination",
    )
    b.add_argument(
        "--group-regex",
        dest="group_regex",
        default=None,
        help=r"patient id from the file stem, keeps a patient's images together (knee set: '^(\d+)[LR]$')",
    )
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=run_build_bank)

    e = sub.add_parser(
        "evaluate", help="image- and pixel-level evaluation on the knee KL set (+ synthetic lesions)"
    )
    _common(e)
    e.add_argument("--data", required=True, help="knee_kl folder with <split>/<KL grade>/*.png")
    e.add_argument("--normal-bank", dest="normal_bank", help="bank built from train KL 0 only")
    e.add_argument(
        "--out",
        required=True,
        help="report folder (heatmap_eval.json, README.md, PNG figures); a path ending in .json: JSON only",
    )
    e.add_argument(
        "--update-doc",
        dest="update_doc",
        default=None,
        help="also rewrite the generated results block of this markdown file (e.g. docs/heatmaps.md)",
    )
    e.add_argument("--split", default="val")
    e.add_argument(
        "--max-per-grade", dest="max_per_grade", type=int, default=None, help="cap images per grade"
    )
    e.add_argument(
        "--lesion-images",
        dest="lesion_images",
        type=int,
        default=None,
        help="normal images that get synthetic lesions (default: all KL 0 of the split)",
    )
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=run_evaluate)


def _quiet_faiss() -> None:
    """faiss logs its CPU-feature probing at INFO on import; users do not need it on every run."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def _backbone_arg(args: argparse.Namespace) -> str:
    backbone = args.backbone or _default_backbone()
    if backbone is None:
        raise ValueError("no backbone: pass --backbone or set ORTHOFM_BACKBONE")
    return backbone


def run_heatmaps(args: argparse.Namespace) -> int:
    _quiet_faiss()  # before faiss is imported
    from orthofm.heatmaps import HeatmapConfig, create_engine
    from orthofm.heatmaps.batch import run_folder
    from orthofm.utils.runtime import configure_threads

    if not args.images or not args.out:
        raise ValueError(
            "`orthofm heatmap` needs --images and --out (or a sub-command: build-bank, evaluate)"
        )
    configure_threads()
    config = HeatmapConfig(size=args.size, sigma=args.sigma, region_threshold=args.threshold)
    engine = create_engine(
        _backbone_arg(args), args.method, args.normal_bank, anatomy=args.anatomy, config=config
    )
    result = run_folder(engine, args.images, args.out, fmt=args.format, png=args.png)
    print(
        f"{len(result.rows)} heatmaps written to {args.out}"
        + (f", {len(result.failures)} images failed" if result.failures else "")
    )
    return 0 if not result.failures else 1


def run_build_bank(args: argparse.Namespace) -> int:
    _quiet_faiss()  # before faiss is imported
    from orthofm.heatmaps import BankBuildConfig
    from orthofm.heatmaps.build import build_bank_from_folder
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    config = BankBuildConfig(
        anatomy=args.anatomy,
        coreset_ratio=args.coreset_ratio,
        max_patches=args.max_patches,
        calibration_fraction=args.calibration_fraction,
        group_regex=args.group_regex,
        seed=args.seed,
        size=args.size,
    )
    bank = build_bank_from_folder(_backbone_arg(args), args.images, args.out, config)
    size_mb = sum(f.stat().st_size for f in Path(args.out).iterdir()) / 1e6
    print(
        f"bank {args.out}: {len(bank)} of {bank.card.n_patches_total} patches "
        f"from {bank.card.n_source_images} "
        f"images ({size_mb:.1f} MB), calibrated: {sorted(bank.card.calibration) or 'no'}"
    )
    return 0


def _evaluate_command(args: argparse.Namespace) -> str:
    """The command line that reproduces this evaluation, as written into its report."""
    parts = [".venv/bin/orthofm", "heatmap", "evaluate", "--backbone", _backbone_arg(args)]
    if args.normal_bank:
        parts += ["--normal-bank", str(args.normal_bank)]
    parts += ["--data", str(args.data), "--out", str(args.out)]
    for flag, value in (
        ("--split", None if args.split == "val" else args.split),
        ("--max-per-grade", args.max_per_grade),
        ("--lesion-images", args.lesion_images),
        ("--seed", args.seed or None),
        ("--size", args.size),
        ("--anatomy", None if args.anatomy == "knee" else args.anatomy),
        ("--update-doc", args.update_doc),
    ):
        if value is not None:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def run_evaluate(args: argparse.Namespace) -> int:
    _quiet_faiss()  # before faiss is imported
    from orthofm.evaluate.heatmap_eval import HeatmapEvalConfig, evaluate_from_paths
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    config = HeatmapEvalConfig(
        data=Path(args.data),
        split=args.split,
        max_per_grade=args.max_per_grade,
        lesion_images=args.lesion_images,
        seed=args.seed,
        size=args.size,
    )
    report = evaluate_from_paths(
        _backbone_arg(args),
        args.normal_bank,
        config,
        args.out,
        anatomy=args.anatomy,
        command=_evaluate_command(args),
        update_doc=args.update_doc,
    )
    for name, value in report["summary"].items():
        print(f"{name}: {value}")
    return 0
