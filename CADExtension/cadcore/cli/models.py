"""``cad models list|show|verify|import``: the registry from the command line."""

from __future__ import annotations

import argparse
import json

from cadcore.errors import CadError
from cadcore.registry import find_model_or_bundle, import_package, list_all


def run(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        for package in list_all():
            summary = package.summary()
            kind = "  (MONAI bundle)" if summary.format == "bundle" else ""
            print(f"{summary.id:<28} {summary.version or '':<8} {summary.task:<14} {summary.modality or ''}"
                  f"{kind}  {summary.path}")
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
