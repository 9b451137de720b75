"""``orthofm embed``: compute and cache ``[CLS ; mean patch]`` features of a folder of images."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("embed", help="cache backbone features of every image in a folder (reused by heads)")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--weights", default=None, help="backbone weights (default: the OrthoFM default model folder)")
    p.add_argument("--out", required=True, help="embedding store folder (created)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--series", action="store_true", help="treat every sub-folder as one DICOM series / volume")
    p.add_argument("--max-volume-slices", type=int, default=16, help="central slices averaged per volume")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orthofm.heads.embeddings import embed_folder
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    store, n = embed_folder(args.images, args.weights, args.out, batch_size=args.batch_size, series=args.series,
                            max_volume_slices=args.max_volume_slices)
    print(f"{n} images: {store.stats.hits} cached, {store.stats.computed} computed "
          f"({store.stats.seconds:.1f} s) -> {store.folder}")
    return 0
