"""Command line: `fusedoptim <command>` or `python -m fusedoptim <command>`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._cli import one_line_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fusedoptim", description="Fused, in-place NumPy optimizers: demos and benchmarks.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    from . import bench
    bench.add_parser(sub)
    try:
        from .demo import cli as demo_cli
    except ImportError:  # the demo package is part of the source tree; keep bench usable
        demo_cli = None
    if demo_cli is not None:
        demo_cli.add_compare_parser(sub)
        demo_cli.add_landscape_parser(sub)
    sub.add_parser("config", help="print how the kernels were built").set_defaults(
        func=lambda args: _show_config())
    ins = sub.add_parser("inspect", help="print what a checkpoint file (fo.save) holds, "
                         "without loading it into anything")
    ins.add_argument("path", help="a checkpoint written by fusedoptim.save")
    ins.set_defaults(func=_inspect)
    for p in (parser, *sub.choices.values()):
        one_line_errors(p)
    return parser


def _inspect(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError, describe
    try:
        describe(args.path)
    except (CheckpointError, OSError) as exc:
        print(f"fusedoptim inspect: {exc}", file=sys.stderr)
        return 1
    return 0


def _show_config() -> int:
    from . import show_config
    show_config()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        commands = next(a for a in parser._actions if a.dest == "command").choices or {}
        parser.error(f"a command is required: one of {', '.join(commands)}")
    status: int = args.func(args)       # every command's handler returns an exit status
    return status


if __name__ == "__main__":
    sys.exit(main())
