"""The ``orthofm`` command: one console script whose sub-commands are found, not listed.

Every module ``orthofm/cli/<name>.py`` (names starting with ``_`` are skipped) defines::

    def register(subparsers: argparse._SubParsersAction) -> None:
        p = subparsers.add_parser("name", help="one line shown by `orthofm --help`")
        p.add_argument(...)
        p.set_defaults(func=run)          # run(args: argparse.Namespace) -> int (exit code)

Keep module top-levels light (argparse only): import torch, MONAI, etc. inside ``run`` so that
``orthofm --help`` and ``orthofm --version`` answer instantly. A sub-command module that fails to import is
reported on stderr and left out; the other sub-commands keep working.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType

from orthofm import __version__
from orthofm.utils.log import configure_logging

__all__ = ["Discovery", "build_parser", "discover_commands", "main"]

log = logging.getLogger(__name__)


@dataclass
class Discovery:
    """Result of scanning ``orthofm.cli``: modules that registered, and modules that could not be loaded."""

    modules: list[ModuleType] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)


def _command_module_names() -> list[str]:
    return sorted(
        f"{__name__}.{info.name}"
        for info in pkgutil.iter_modules(__path__)
        if not info.name.startswith("_") and not info.ispkg
    )


def discover_commands(subparsers: argparse._SubParsersAction) -> Discovery:
    """Import every sub-command module and let it ``register`` itself on ``subparsers``."""
    found = Discovery()
    for name in _command_module_names():
        short = name.rsplit(".", 1)[-1]
        try:
            module = importlib.import_module(name)
            register = getattr(module, "register", None)
            if not callable(register):
                raise TypeError(f"{name} has no register(subparsers) function")
            register(subparsers)
        except Exception as exc:  # noqa: BLE001 - one broken sub-command must not take the whole CLI down
            found.failures[short] = f"{type(exc).__name__}: {exc}"
            continue
        found.modules.append(module)
    return found


def build_parser() -> tuple[argparse.ArgumentParser, Discovery]:
    """The top-level parser with global options and every discovered sub-command."""
    parser = argparse.ArgumentParser(
        prog="orthofm",
        description="OrthoFM: musculoskeletal imaging foundation model tools (MONAI Label app, heads, heatmaps).",
        epilog="Run `orthofm <command> --help` for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"orthofm {__version__}")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    level.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument("--traceback", action="store_true", help="show the full traceback when a command fails")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    return parser, discover_commands(subparsers)


def _log_level(args: argparse.Namespace) -> str | None:
    if args.verbose:
        return "DEBUG"
    if args.quiet:
        return "WARNING"
    return None  # ORTHOFM_LOG_LEVEL or INFO


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``orthofm`` console script; returns the process exit code."""
    # Idle OpenMP threads spin by default; on a shared 2-core machine that burned more CPU than the work
    # (a ResNet-18 step: 6.54 CPU-s vs 2.78 with PASSIVE, measured by bench_heads). Must precede torch's import.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser, discovery = build_parser()
    for short, reason in discovery.failures.items():
        print(f"orthofm: warning: sub-command module '{short}' could not be loaded ({reason})", file=sys.stderr)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    configure_logging(_log_level(args))
    try:
        code = func(args)
    except KeyboardInterrupt:
        print("orthofm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.traceback:
            raise
        print(f"orthofm {args.command}: error: {exc}", file=sys.stderr)
        print("(run with --traceback for details)", file=sys.stderr)
        return 1
    return int(code or 0)
