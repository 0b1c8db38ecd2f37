"""The ``cad`` command: segment, classify, train, evaluate, models.

Contract: exit 0 on success; exit 2 with one line on stderr naming the file and the problem on bad input or usage;
nothing written on failure. Each subcommand's handler lives in its own module here and is imported only when that
subcommand runs, so ``cad models list`` never pays for torch's training stack.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from types import ModuleType

from cadcore.cli.parser import build_parser
from cadcore.errors import CadError


def handler_of(command: str) -> ModuleType:
    """The module whose ``run(args)`` carries out ``command`` (imported here, written out for the layering test)."""
    if command == "segment":
        from cadcore.cli import segment as handler
    elif command == "classify":
        from cadcore.cli import classify as handler
    elif command == "train":
        from cadcore.cli import train as handler
    elif command == "evaluate":
        from cadcore.cli import evaluate as handler
    else:
        from cadcore.cli import models as handler
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = handler_of(args.command)
    try:
        return handler.run(args)
    except CadError as exc:
        sys.stderr.write(f"cad {args.command}: error: {exc}\n")
        return 2
