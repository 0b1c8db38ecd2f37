"""``cad models list|show|verify|import``: the registry from the command line.

Output is often piped (``cad models show X | head``); a reader that stops early ends the command quietly (exit 141,
as a shell tool stopped by SIGPIPE), which :func:`cadcore.cli.main` handles for every command.
"""

from __future__ import annotations

import argparse
import json

from cadcore.errors import CadError
from cadcore.registry import find_model_or_bundle, import_package, list_all, list_shadowed

SHADOWED = "(shadowed by the shipped model of this id: not used)"


def run(args: argparse.Namespace) -> int:
    return dispatch(args)


def line_of(model: object, note: str = "") -> str:
    summary = model.summary()  # type: ignore[attr-defined]
    kind = ("  (MONAI bundle)" if summary.format == "bundle" else
            "  (guided: cad interact)" if summary.guided else "")
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
