"""``orthofm env``: what OrthoFM sees of this machine (CPU, bf16 support, threads, library versions)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("env", help="show CPU, precision, thread and library facts for bug reports")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from orthofm.utils.machine import describe_machine
    from orthofm.utils.runtime import configure_threads

    configure_threads()
    facts = describe_machine()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    libraries = facts.pop("libraries")
    for key, value in facts.items():
        shown = " ".join(value) if isinstance(value, list) and key == "isa_flags" else value
        print(f"{key:24s} {shown}")
    for name, version in libraries.items():
        print(f"{'  ' + name:24s} {version}")
    return 0
