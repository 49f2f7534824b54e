"""What every ``fusedoptim`` command's parser shares: bad input is one line on stderr."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

#: the exit status of a usage error (argparse's)
EXIT_USAGE = 2


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make `parser`'s errors one line (``prog: error: ... (see --help)``, exit status 2)
    instead of argparse's usage block and message. Returns the parser."""
    if getattr(parser, "_one_line_errors", False):
        return parser

    def error(message: str) -> NoReturn:
        parser.exit(EXIT_USAGE, f"{parser.prog}: error: {message} (see --help)\n")

    # A subparser hands unknown arguments back to the top-level parser, whose error would
    # print its usage block; rejecting them here keeps that error one line too.
    parse_known = parser.parse_known_args

    def parse_known_args(args: Sequence[str] | None = None,
                         namespace: Any = None) -> tuple[Any, list[str]]:
        namespace, extras = parse_known(args, namespace)
        if extras:
            error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    parser.error = error                                    # type: ignore[method-assign]
    parser.parse_known_args = parse_known_args              # type: ignore[method-assign,assignment]
    parser._one_line_errors = True                          # type: ignore[attr-defined]
    return parser
