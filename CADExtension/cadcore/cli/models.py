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


def inference_path(model: object) -> dict[str, object]:
    """For a MONAI bundle, the path ``cad segment`` takes: ``engine`` (translated onto cad's optimised path) or
    ``monai.bundle`` with the one-line reason (the transform or argument not translated); nothing for a package."""
    from cadcore.registry.bundles import BundleModel

    if not isinstance(model, BundleModel):
        return {}
    from cadcore.segmentation.bundle_inference import bundle_translation

    translation = bundle_translation(model)
    return {"inference_path": {"path": translation.path, "reason": translation.reason}}


def dispatch(args: argparse.Namespace) -> int:
    if args.models_command == "list":
        for model in list_all():
            print(line_of(model))
        for model in list_shadowed():
            print(line_of(model, SHADOWED))
        return 0
    if args.models_command == "show":
        model = find_model_or_bundle(args.model)
        print(json.dumps({**model.as_json(), **inference_path(model)}, indent=2))
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
