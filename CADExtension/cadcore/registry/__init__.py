"""The model registry: model packages (:mod:`.packages`) and MONAI bundles (:mod:`.bundles`).

This is the one place that knows both kinds: finding a model by id or folder, listing, importing. The two kinds'
modules never import each other (they share :mod:`.locations`), so neither can grow a hidden cycle.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cadcore.errors import CadError
from cadcore.io.images import refuse_existing
from cadcore.registry.locations import user_models_dir
from cadcore.registry.packages import ModelPackage, find_model, read_card


def find_model_or_bundle(model: str | Path) -> Any:
    """Like :func:`find_model`, but a MONAI bundle folder (or an installed bundle's id) gives a
    :class:`cadcore.registry.bundles.BundleModel`; only ``cad segment`` and ``cad models`` accept bundles."""
    from cadcore.registry.bundles import list_bundles, looks_like_bundle, read_bundle

    path = Path(model)
    if looks_like_bundle(path):
        return read_bundle(path)
    try:
        return find_model(model)
    except CadError:
        if path.is_dir():
            raise
        for bundle in list_bundles():
            if bundle.id == str(model):
                return bundle
        raise


def import_package(source: Path, force: bool = False) -> ModelPackage:
    """Copy a verified package folder (or MONAI bundle folder) into the user registry."""
    from cadcore.registry.bundles import import_bundle, looks_like_bundle

    if looks_like_bundle(Path(source)):
        return import_bundle(Path(source), force)  # type: ignore[return-value]
    package = find_model(source)
    package.verify()
    target = user_models_dir() / package.id
    refuse_existing(target.exists(), "a model with this id is already installed", target, force, verb="replace it")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(package.folder, target)
    return ModelPackage(target, read_card(target))
