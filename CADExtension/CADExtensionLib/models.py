"""The model registry seen from Slicer: list, import, verify, remove and download models without importing cadcore.

The engine's registry (``cadcore.registry``) is two folders of packages (``<id>/model.json`` + ``model.safetensors``):
the packages shipped in ``CADExtension/cadcore/models/``, then the user folder (``$CAD_MODELS``, default
``~/.cadextension/models``); the first package of a given id wins. This module reads the same cards with the
standard library only, so listing models never loads torch into Slicer's interpreter. The user folder can be given
explicitly (the module's Slicer setting); :meth:`ModelManagerLogic.engineEnvironment` then passes it to the engine
process as ``CAD_MODELS`` so both sides see the same models. Each model is read once into a
:class:`~CADExtensionLib.model_summary.ModelSummary`, which the listing, the imports and the panels share.

Imports are checked before they are accepted: a package's weights must match the sha256 in its card (the engine
refuses them otherwise, later and less clearly); a ``.zip`` is extracted only if no member is absolute, climbs out
with ``..`` or is a link; an existing id is replaced only with ``overwrite=True``, and only once the new copy is
complete. A MONAI bundle (a folder with ``configs/metadata.json``) is copied as it is, under its folder name, with a
``cadextension-bundle.json`` marker recording the sha256 of each of its files so :meth:`~ModelManagerLogic.verifyModel`
can detect later changes; the engine runs it as a segmentation model (``cad segment -m <bundle id>``). Downloads
are streamed to a temporary file and hashed before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from CADExtensionLib.model_summary import ModelSummary

CARD_NAME = "model.json"
WEIGHTS_NAME = "model.safetensors"
BUNDLE_METADATA = Path("configs") / "metadata.json"
BUNDLE_MARKER = "cadextension-bundle.json"
REQUIRED_FIELDS = ("id", "task", "network", "version")
TASKS = ("segmentation", "classification")
DOWNLOAD_SCHEMES = ("https", "http", "file")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ModelError(ValueError):
    """A model that cannot be listed, imported, verified or removed, with the reason."""


def shippedModelsFolder() -> Path:
    """``CADExtension/cadcore/models``: the packages shipped with the extension (read-only for the manager)."""
    return Path(__file__).resolve().parents[1] / "cadcore" / "models"


def defaultUserModelsFolder() -> Path:
    """The engine's default user folder: ``$CAD_MODELS``, else ``~/.cadextension/models``."""
    return Path(os.environ.get("CAD_MODELS") or Path.home() / ".cadextension" / "models")


def sha256OfFile(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _checkedId(modelId: Any, where: Path) -> str:
    modelId = str(modelId)
    if not _SAFE_ID.match(modelId) or modelId in (".", ".."):
        raise ModelError(f"{where}: model id {modelId!r} is not a safe folder name (letters, digits, . _ -)")
    return modelId


def readCard(folder: Path) -> dict[str, Any]:
    """A package's model card, checked as the engine checks it (required fields, known task)."""
    cardPath = folder / CARD_NAME
    try:
        card = json.loads(cardPath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{cardPath}: cannot read the model card ({exc})") from exc
    if not isinstance(card, dict):
        raise ModelError(f"{cardPath}: the model card is not a JSON object")
    missing = [name for name in REQUIRED_FIELDS if name not in card]
    if missing:
        raise ModelError(f"{cardPath}: the model card lacks {', '.join(missing)}")
    if card["task"] not in TASKS:
        raise ModelError(f"{cardPath}: unknown task {card['task']!r} (expected one of {', '.join(TASKS)})")
    return card


def _weightsPath(folder: Path, card: dict[str, Any]) -> Path:
    """The weights file the card names, refused if the name would leave the package folder."""
    name = str((card.get("weights") or {}).get("file", WEIGHTS_NAME))
    if PurePosixPath(name).name != name or name in ("", ".", "..") or "\\" in name:
        raise ModelError(f"{folder / CARD_NAME}: weights file {name!r} must be a plain file name in the package")
    return folder / name


def verifyPackageFolder(folder: Path) -> str:
    """Check a package folder's weights against its card's sha256; return the hash, or raise :class:`ModelError`."""
    card = readCard(folder)
    weights = _weightsPath(folder, card)
    expected = str((card.get("weights") or {}).get("sha256") or "").lower()
    if not _SHA256.match(expected):
        raise ModelError(f"{folder / CARD_NAME}: the card has no valid weights sha256; refusing unverified weights")
    if not weights.is_file():
        raise ModelError(f"{weights}: the model weights file is missing")
    actual = sha256OfFile(weights)
    if actual != expected:
        raise ModelError(f"{weights}: weights sha256 mismatch (card {expected[:12]}…, file {actual[:12]}…); the file "
                         "is corrupt or altered")
    return actual


def _bundleFiles(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != BUNDLE_MARKER)


def _bundleSummary(folder: Path, shipped: bool = False) -> ModelSummary:
    """A MONAI bundle's summary from its ``configs/metadata.json``: id = folder name, labels from the first output's
    ``channel_def``, modality from the first input; raises :class:`ModelError` when the metadata is unreadable."""
    try:
        metadata = json.loads((folder / BUNDLE_METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder / BUNDLE_METADATA}: cannot read the bundle metadata ({exc})") from exc
    if not isinstance(metadata, dict):
        raise ModelError(f"{folder / BUNDLE_METADATA}: the bundle metadata is not a JSON object")
    data = metadata.get("network_data_format") or {}
    inputs = data.get("inputs") or {}
    outputs = data.get("outputs") or {}
    firstInput = next(iter(inputs.values()), {}) if isinstance(inputs, dict) else {}
    firstOutput = next(iter(outputs.values()), {}) if isinstance(outputs, dict) else {}
    channels = firstOutput.get("channel_def") if isinstance(firstOutput, dict) else None
    return ModelSummary(
        id=folder.name,
        task="segmentation",  # the engine runs every bundle through ``cad segment``; metadata "task" is prose
        path=str(folder),
        version=_text(metadata.get("version")),
        description=_text(metadata.get("description", metadata.get("name", ""))),
        modality=_text(firstInput.get("modality") if isinstance(firstInput, dict) else None),
        labels=channels if isinstance(channels, dict) else {},
        shipped=shipped,
        bundle=True,
        bundleTask=_text(metadata.get("task")),
    )


def _text(value: Any) -> str:
    """A card or metadata field as display text: ``""`` for a missing (None) field."""
    return "" if value is None else str(value)


def _summary(folder: Path, shipped: bool) -> ModelSummary:
    """The :class:`ModelSummary` of a package folder (its card) or a MONAI bundle folder (its metadata)."""
    if (folder / CARD_NAME).is_file():
        card = readCard(folder)
        return ModelSummary(
            id=str(card["id"]),
            task=str(card["task"]),
            path=str(folder),
            version=_text(card.get("version")),
            description=_text(card.get("description", "")),
            modality=_text(card.get("modality")),
            labels={str(label["value"]): str(label["name"]) for label in card.get("labels", [])
                    if isinstance(label, dict) and "value" in label and "name" in label},
            classes=tuple(str(c["name"]) for c in sorted(
                (c for c in card.get("classes", []) if isinstance(c, dict) and "value" in c and "name" in c),
                key=lambda c: int(c["value"]))),
            shipped=shipped,
            baseline=(card.get("network") or {}).get("name") == "baseline",
            fast=card.get("fast") if isinstance(card.get("fast"), dict) else None,
            guided=isinstance(card.get("interactive"), dict),
            pipeline=_text((card.get("pipeline") or {}).get("name")) if isinstance(card.get("pipeline"), dict) else "",
        )
    if (folder / BUNDLE_METADATA).is_file():
        return _bundleSummary(folder, shipped)
    raise ModelError(f"{folder}: neither a model package ({CARD_NAME}) nor a MONAI bundle ({BUNDLE_METADATA})")


def isSafeModelId(modelId: str) -> bool:
    """True when ``modelId`` can name a package folder (letters, digits, ``.``, ``_``, ``-``; no path tricks)."""
    return bool(_SAFE_ID.match(str(modelId))) and str(modelId) not in (".", "..")


def _safeZipMembers(archive: zipfile.ZipFile, source: Path) -> list[zipfile.ZipInfo]:
    """Every member, refused if any is absolute, has a drive, climbs out with ``..`` or is a link."""
    members = archive.infolist()
    for member in members:
        name = member.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise ModelError(f"{source}: refusing the archive member {member.filename!r} (absolute path or '..')")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise ModelError(f"{source}: refusing the archive member {member.filename!r} (a link)")
    return members


def _extractZip(source: Path, target: Path) -> Path:
    """Extract ``source`` safely into ``target``; the package root (``target`` or its single top-level folder)."""
    try:
        with zipfile.ZipFile(source) as archive:
            for member in _safeZipMembers(archive, source):
                destination = target.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
                if not destination.resolve().is_relative_to(target.resolve()):
                    raise ModelError(f"{source}: refusing the archive member {member.filename!r} (outside the "
                                     "extraction folder)")
                if member.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as reader, open(destination, "wb") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)
    except zipfile.BadZipFile as exc:
        raise ModelError(f"{source}: not a readable .zip archive ({exc})") from exc
    entries = [p for p in target.iterdir() if p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not (target / CARD_NAME).exists():
        return entries[0]
    return target


class ModelManagerLogic:
    """List, import, verify, remove and download models (see the module docstring)."""

    def __init__(self, modelsFolder: str | os.PathLike[str] | None = None,
                 shippedFolder: str | os.PathLike[str] | None = None) -> None:
        self.userFolder = Path(modelsFolder) if modelsFolder else defaultUserModelsFolder()
        self.shippedFolder = Path(shippedFolder) if shippedFolder else shippedModelsFolder()

    def engineEnvironment(self) -> dict[str, str]:
        """``CAD_MODELS`` for the engine process, so ``cad`` finds the models this manager lists."""
        return {"CAD_MODELS": str(self.userFolder)}

    # --- listing ----------------------------------------------------------------------------------------------------

    def _entries(self) -> list[ModelSummary]:
        entries = []
        for root, shipped in ((self.shippedFolder, True), (self.userFolder, False)):
            if not root.is_dir():
                continue
            for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
                try:
                    entries.append(_summary(folder, shipped))
                except ModelError:
                    continue  # not a model (or a broken one): the engine skips it too
        return entries

    def listModels(self) -> list[ModelSummary]:
        """Every model, shipped first; the first entry of a given id wins, as in the engine."""
        found: dict[str, ModelSummary] = {}
        for entry in self._entries():
            found.setdefault(entry.id, entry)
        return list(found.values())

    def model(self, modelId: str) -> ModelSummary:
        """The listed model ``modelId``; :class:`ModelError` naming the installed ids when there is none."""
        models = self.listModels()
        for entry in models:
            if entry.id == modelId:
                return entry
        known = ", ".join(sorted(entry.id for entry in models)) or "none"
        raise ModelError(f"unknown model {modelId!r} (installed: {known})")

    # --- verify / remove --------------------------------------------------------------------------------------------

    def verifyModel(self, modelId: str) -> bool:
        """True when the model's files match their recorded sha256 (the card's, or the bundle marker's)."""
        entry = self.model(modelId)
        folder = Path(entry.path)
        if not entry.bundle:
            try:
                verifyPackageFolder(folder)
            except ModelError:
                return False
            return True
        try:
            recorded = json.loads((folder / BUNDLE_MARKER).read_text(encoding="utf-8"))["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        present = {p.relative_to(folder).as_posix(): p for p in _bundleFiles(folder)}
        return set(present) == set(recorded) and all(sha256OfFile(p) == recorded[name] for name, p in present.items())

    def removeModel(self, modelId: str) -> None:
        """Delete a user model; shipped models are refused."""
        userEntries = [e for e in self._entries() if e.id == modelId and not e.shipped]
        if not userEntries:
            if any(e.id == modelId for e in self._entries()):
                raise ModelError(f"{modelId!r} is shipped with the extension and cannot be removed")
            raise ModelError(f"unknown model {modelId!r}")
        for entry in userEntries:
            folder = Path(entry.path)
            if folder.is_symlink() or not folder.resolve().is_relative_to(self.userFolder.resolve()):
                raise ModelError(f"{folder}: not inside the user model folder {self.userFolder}; not removed")
            shutil.rmtree(folder)

    # --- import -----------------------------------------------------------------------------------------------------

    def importModel(self, path: str | os.PathLike[str], overwrite: bool = False) -> ModelSummary:
        """Install a package folder, a ``.zip`` of one, or a MONAI bundle folder into the user folder.

        Returns the new model's :class:`ModelSummary`. Raises :class:`ModelError` (nothing installed, nothing left
        behind) for a bad archive, a card without required fields, weights that do not match the card's sha256, an id
        of a shipped model, or an existing id without ``overwrite``.
        """
        source = Path(path)
        if not source.exists():
            raise ModelError(f"{source}: no such file or folder")
        self.userFolder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=self.userFolder))  # same disk: the final move is atomic
        try:
            if source.is_dir():
                root = staging / source.name
                shutil.copytree(source, root, symlinks=False)
            elif zipfile.is_zipfile(source):
                (staging / "extracted").mkdir()
                root = _extractZip(source, staging / "extracted")
            else:
                raise ModelError(f"{source}: expected a model package folder, a .zip of one, or a MONAI bundle folder")
            if (root / CARD_NAME).is_file():
                modelId = _checkedId(readCard(root)["id"], source)
                verifyPackageFolder(root)
            elif (root / BUNDLE_METADATA).is_file():
                modelId = _checkedId(source.stem if root == staging / "extracted" else root.name, source)
                _bundleSummary(root)  # readable metadata, or refuse
                marker = {"format": "monai-bundle", "source": str(source),
                          "imported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "sha256": {p.relative_to(root).as_posix(): sha256OfFile(p) for p in _bundleFiles(root)}}
                (root / BUNDLE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            else:
                raise ModelError(f"{source}: neither a model package ({CARD_NAME}) nor a MONAI bundle "
                                 f"({BUNDLE_METADATA.as_posix()})")
            if any(e.id == modelId and e.shipped for e in self._entries()):
                raise ModelError(f"{modelId!r} is the id of a model shipped with the extension; give the import "
                                 "another id")
            target = self.userFolder / modelId
            old = None
            if target.exists() or target.is_symlink():
                if not overwrite:
                    raise ModelError(f"{target}: a model with id {modelId!r} is already installed; pass "
                                     "overwrite=True to replace it")
                old = staging / "replaced"
                os.replace(target, old)  # kept until the new copy is in place, removed with the staging folder
            try:
                os.replace(root, target)
            except OSError:
                if old is not None:
                    os.replace(old, target)
                raise
            return _summary(target, shipped=False)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- download ---------------------------------------------------------------------------------------------------

    def downloadModel(self, url: str, sha256: str, overwrite: bool = False,
                      onProgress: Callable[[int, int | None], None] | None = None,
                      timeout: float = 60.0) -> ModelSummary:
        """Download a model ``.zip``, check its sha256, then import it (see :meth:`importModel`)."""
        self.userFolder.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".download-", dir=self.userFolder))
        try:
            archive = downloadFile(url, sha256, folder / "model.zip", onProgress=onProgress, timeout=timeout)
            return self.importModel(archive, overwrite=overwrite)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def downloadFile(url: str, sha256: str, destination: str | os.PathLike[str],
                 onProgress: Callable[[int, int | None], None] | None = None, timeout: float = 60.0,
                 chunkSize: int = 1 << 20) -> Path:
    """Stream ``url`` into a temporary file beside ``destination``, check its sha256, then move it into place.

    ``onProgress(bytesRead, totalBytes or None)`` follows the download. On a wrong hash, an unsupported scheme or
    any error nothing is left behind (and an existing ``destination`` is untouched).
    """
    expected = str(sha256).strip().lower()
    if not _SHA256.match(expected):
        raise ModelError(f"expected sha256 must be 64 hexadecimal digits, got {sha256!r}")
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in DOWNLOAD_SCHEMES:
        raise ModelError(f"{url}: unsupported URL scheme {scheme!r} (use {', '.join(DOWNLOAD_SCHEMES)})")
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    temporary = Path(temporary)
    try:
        digest = hashlib.sha256()
        done = 0
        with os.fdopen(handle, "wb") as writer, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            while block := response.read(chunkSize):
                writer.write(block)
                digest.update(block)
                done += len(block)
                if onProgress is not None:
                    onProgress(done, total)
        actual = digest.hexdigest()
        if actual != expected:
            raise ModelError(f"{url}: sha256 mismatch (expected {expected[:12]}…, got {actual[:12]}…); download "
                             "refused")
        os.replace(temporary, destination)
        return destination
    finally:
        temporary.unlink(missing_ok=True)
