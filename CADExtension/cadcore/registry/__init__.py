"""The model registry: model packages (:mod:`.packages`) and MONAI bundles (:mod:`.bundles`).

This is the one place that knows both kinds: finding a model by id or folder, listing, importing. The two kinds'
modules never import each other (they share :mod:`.locations`), so neither can grow a hidden cycle.
"""

from __future__ import annotations

from pathlib import Path

from cadcore.errors import CadError
from cadcore.registry.bundles import BundleModel, import_bundle, list_bundles, looks_like_bundle, read_bundle
from cadcore.registry.locations import install
from cadcore.registry.packages import ModelPackage, find_model, list_models, read_card


def list_all() -> list[ModelPackage | BundleModel]:
    """Every registered model: packages first, then bundles (``cad models list``)."""
    return [*list_models(), *list_bundles()]


def find_model_or_bundle(model: str | Path) -> ModelPackage | BundleModel:
    """Like :func:`find_model`, but a MONAI bundle folder (or an installed bundle's id) gives a
    :class:`cadcore.registry.bundles.BundleModel`; only ``cad segment`` and ``cad models`` accept bundles."""
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


def import_package(source: Path, force: bool = False) -> ModelPackage | BundleModel:
    """Copy a verified package folder (or MONAI bundle folder) into the user registry."""
    if looks_like_bundle(Path(source)):
        return import_bundle(Path(source), force)
    package = find_model(source)
    package.verify()
    target = install(package.folder, package.id, force)
    return ModelPackage(target, read_card(target))
