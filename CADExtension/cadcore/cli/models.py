"""``cad models list|show|verify|import``: the registry from the command line.

Output is often piped (``cad models show X | head``): a reader that stops early is not an error, so a closed pipe
ends the command quietly instead of with a ``BrokenPipeError`` traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from cadcore.errors import CadError
from cadcore.registry import find_model_or_bundle, import_package, list_all, list_shadowed

SHADOWED = "(shadowed by the shipped model of this id: not used)"


def run(args: argparse.Namespace) -> int:
    try:
        code = dispatch(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly. Point stdout at /dev/null so the interpreter's own flush
        # at exit does not raise again (the documented idiom, docs.python.org/3/library/signal.html#note-on-sigpipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def line_of(model: object, note: str = "") -> str:
    summary = model.summary()  # type: ignore[attr-defined]
    kind = "  (MONAI bundle)" if summary.format == "bundle" else ""
    return (f"{summary.id:<28} {summary.version or '':<8} {summary.task:<14} {summary.modality or ''}"
            f"{kind}  {summary.path}{'  ' + note if note else ''}")


def dispatch(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        for model in list_all():
            print(line_of(model))
        for model in list_shadowed():
            print(line_of(model, SHADOWED))
        return 0
    if args.models_command == "show":
        print(json.dumps(find_model_or_bundle(args.model).as_json(), indent=2))
        return 0
    if args.models_command == "verify":
        package = find_model_or_bundle(args.model)
        digest = package.verify()
        print(f"{package.id}: weights OK (sha256 {digest})")
        return 0
    if args.models_command == "import":
        package = import_package(args.source, force=args.force)
        print(f"imported {package.id} into {package.folder}")
        return 0
    raise CadError(f"unknown models command {args.models_command}")
