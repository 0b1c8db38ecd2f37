"""The model registry: model packages (:mod:`.packages`) and MONAI bundles (:mod:`.bundles`).

This is the one place that knows both kinds: finding a model by id or folder, listing, importing. The two kinds'
modules never import each other (they share :mod:`.locations`), so neither can grow a hidden cycle.
"""

from __future__ import annotations

from pathlib import Path

from cadcore.errors import CadError
from cadcore.registry.bundles import (
    BundleModel,
    all_bundles,
    import_bundle,
    list_bundles,
    looks_like_bundle,
    read_bundle,
)
from cadcore.registry.locations import CARD_NAME, install, is_shipped, refuse_links
from cadcore.registry.packages import ModelPackage, all_packages, find_model, list_models, read_card


def list_all() -> list[ModelPackage | BundleModel]:
    """Every registered model that an id resolves to: packages first, then bundles (``cad models list``)."""
    return [*list_models(), *list_bundles()]


def list_shadowed() -> list[ModelPackage | BundleModel]:
    """User models that are never used because a shipped model has their id (``cad models list`` says so)."""
    shipped = shipped_ids()
    users = [*all_packages(), *all_bundles()]
    return [model for model in users if model.id in shipped and not is_shipped(model.folder)]


def shipped_ids() -> set[str]:
    """Ids of the packages and bundles shipped inside cadcore: the vetted models, which win over user copies."""
    return {model.id for model in [*all_packages(), *all_bundles()] if is_shipped(model.folder)}


def find_model_or_bundle(model: str | Path) -> ModelPackage | BundleModel:
    """Like :func:`find_model`, but a MONAI bundle folder (or an installed bundle's id) gives a
    :class:`cadcore.registry.bundles.BundleModel`; ``cad segment``, ``cad interact`` and ``cad models`` accept
    bundles."""
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
    """Copy a verified package folder (or MONAI bundle folder) into the user registry.

    Refused, before anything is copied: a folder that is or holds a symbolic link, a card whose id is not a plain
    name, weights that are not a safetensors file fitting the card's networks, and (without ``force``) an id that a
    shipped model already has, since the shipped model would keep being used. The copy is verified again before it
    takes its place in the registry."""
    source = Path(source)
    if source.is_symlink() or source.exists():  # otherwise a registered id, or an unknown name find_model reports
        refuse_links(source)
    if looks_like_bundle(source):
        bundle = read_bundle(source)
        refuse_shadowing(bundle.id, source, force)
        return import_bundle(source, force)
    package = find_model(source)
    package.verify()
    refuse_shadowing(package.id, package.folder / CARD_NAME, force)

    def check_copy(copy: Path) -> None:
        ModelPackage(copy, read_card(copy)).verify()

    target = install(package.folder, package.id, force, check_copy)
    return ModelPackage(target, read_card(target))


def refuse_shadowing(model_id: str, where: Path, force: bool) -> None:
    if model_id in shipped_ids() and not force:
        raise CadError(f"a shipped model has this id ({model_id!r}); the shipped one would still be used, so this "
                       f"import would change nothing: give the model another id, or pass --force to install it "
                       f"anyway (listed as shadowed)", where)
