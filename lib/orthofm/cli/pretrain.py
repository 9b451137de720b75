"""``orthofm pretrain``: self-supervised pretraining on a lab's own unlabeled images."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining (MAE, DINO/iBOT/KoLeo) on folders of unlabeled images",
        description="Pretrain or continue pretraining a backbone. Resumes automatically from OUT/checkpoint.pt. "
        "SIGTERM or Ctrl-C writes a checkpoint at the current step and exits with 128 + the signal number. "
        "Run under `torchrun --nproc_per_node N` for DDP (gloo on CPU, NCCL on GPU).",
    )
    p.add_argument("--data", nargs="+", required=True, help="folders or files of DICOM/PNG/JPEG/NIfTI/NRRD images")
    p.add_argument("--out", required=True, help="run folder (checkpoint, metrics.csv, loss_curve.png, config.yaml)")
    p.add_argument("--config", help="YAML file overriding the defaults (see docs/pretraining.md)")
    p.add_argument("--arch", help="timm architecture, e.g. vit_small_patch16_dinov3_qkvb")
    p.add_argument("--init", help="continue from any checkpoint `orthofm weights inspect` understands")
    p.add_argument("--objective", choices=["mae", "dino", "mae+dino"])
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int, dest="batch_size", help="per process")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help="auto (default): bf16 autocast where the CPU/GPU multiplies bf16 natively, else fp32")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set dino.local_crops=2 mask_ratio=0.6")
    p.add_argument("--export", metavar="FOLDER", help="after training, write the backbone in OrthoFM format here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from orthofm.ssl import PretrainingStopped, load_config, pretrain
    from orthofm.ssl.export import export_run
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    config = load_config(
        args.config, args.set, data=args.data, out=args.out, arch=args.arch, init=args.init,
        objective=args.objective, epochs=args.epochs, batch_size=args.batch_size, precision=args.precision,
    )
    try:
        out = pretrain(config)
    except PretrainingStopped as stopped:  # SIGTERM / Ctrl-C: checkpoint written, nothing exported
        logging.getLogger("orthofm.pretrain").warning("%s", stopped)
        return 128 + stopped.signum  # the shell's convention for "ended by signal N" (143 for SIGTERM)
    if args.export:
        export_run(out, args.export)
    return 0
