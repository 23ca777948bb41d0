"""`vqgan-clip`: the engine's command line.

Each sub-command lives in its own module under `engine.commands` and exposes
`register(subparsers)`; that module must import torch only inside the function that runs,
so that `vqgan-clip --help` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from engine import __version__
from engine.errors import EngineError

# Sub-command modules, in the order `--help` lists them.
COMMAND_MODULES = (
    "engine.commands.generate",   # imagine, edit
    "engine.commands.download",   # download
    "engine.commands.models",     # make-test-models
    "engine.commands.worker",     # worker
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqgan-clip",
        description="Make and edit images from text with VQGAN-CLIP.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ERROR)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EngineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
