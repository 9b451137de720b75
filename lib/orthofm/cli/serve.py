"""`orthofm serve`: run the OrthoFM MONAI Label server on a studies folder or a DICOMweb URL."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def default_app_dir() -> Path:
    """The repository's ``monailabel_app/`` (editable install), or ``ORTHOFM_APP_DIR``."""
    env = os.environ.get("ORTHOFM_APP_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "monailabel_app"


def _conf_pairs(pairs: list[list[str]] | None) -> dict[str, str]:
    return {k: v for k, v in (pairs or [])}


def run(args: argparse.Namespace) -> int:
    app_dir = Path(args.app).resolve() if args.app else default_app_dir().resolve()
    if not (app_dir / "main.py").is_file():
        print(f"orthofm serve: {app_dir} is not a MONAI Label app (no main.py); pass --app DIR", file=sys.stderr)
        return 2
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    from lib.server.launcher import LaunchSpec, serve

    spec = LaunchSpec(studies=args.studies, app_dir=str(app_dir), host=args.host, port=args.port,
                      conf=_conf_pairs(args.conf))
    try:
        return serve(spec)
    except (ValueError, FileNotFoundError) as exc:
        print(f"orthofm serve: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the OrthoFM MONAI Label server",
        description="Serve OrthoFM's tasks (knee_kl, abnormality, segmentation, embedding), training and active "
        "learning to MONAI Label clients (3D Slicer, the Python client). Binding to a non-loopback address "
        "requires an API token (--conf token_file PATH or ORTHOFM_API_TOKEN).",
    )
    p.add_argument("--studies", required=True, help="studies folder (created if missing) or a DICOMweb URL")
    p.add_argument("--app", default=None, help="MONAI Label app folder (default: the repository's monailabel_app/)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="app/server setting, repeatable: weights PATH, device cpu, models all, token_file PATH, "
                   "cors_origins URL[,URL], max_upload_mb N, max_megapixels N, deidentify true, ...")
    p.set_defaults(func=run)
