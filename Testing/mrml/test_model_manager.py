"""ModelManagerLogic: the registry read without cadcore (and agreeing with it), imports of folders, zips and MONAI
bundles checked before acceptance, verify/remove rules, and sha256-checked downloads over file:// URLs only."""

from __future__ import annotations

import json
import stat
import zipfile
from pathlib import Path

import pytest
from CADExtensionLib.models import (
    BUNDLE_MARKER,
    ModelError,
    ModelManagerLogic,
    ModelSummary,
    downloadFile,
    sha256OfFile,
    shippedModelsFolder,
)

from conftest import make_tiny_classification_package, make_tiny_segmentation_package

from .conftest import REPO


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packages")
    return {"classifier": make_tiny_classification_package(root / "tiny-resnet").folder,
            "segmenter": make_tiny_segmentation_package(root / "tiny-unet").folder}


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    shipped.mkdir()
    return shipped, user


def copy_package(source: Path, target: Path, **card_changes) -> Path:
    target.mkdir(parents=True)
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    if card_changes:
        card = json.loads((target / "model.json").read_text())
        card.update(card_changes)
        (target / "model.json").write_text(json.dumps(card))
    return target


def make_bundle(folder: Path) -> Path:
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    metadata = {"version": "0.5.2", "task": "Spleen segmentation", "description": "a MONAI bundle",
                "network_data_format": {"inputs": {"image": {"modality": "CT"}},
                                        "outputs": {"pred": {"channel_def": {"0": "background", "1": "spleen"}}}}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    (folder / "configs" / "inference.json").write_text("{}")
    (folder / "models" / "model.pt").write_bytes(b"\x80weights")
    return folder


def zip_folder(folder: Path, archive: Path, top: str | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as writer:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(folder).as_posix()
                writer.write(path, f"{top}/{name}" if top else name)
    return archive


def leftovers(user: Path) -> list[str]:
    return sorted(p.name for p in user.iterdir()) if user.exists() else []


def test_listing_reads_cards_shipped_first_and_skips_broken_folders(folders, packages):
    shipped, user = folders
    copy_package(packages["segmenter"], shipped / "tiny-unet")
    copy_package(packages["classifier"], user / "tiny-resnet")
    copy_package(packages["classifier"], user / "shadowed", id="tiny-unet")  # same id as a shipped one
    (user / "broken").mkdir()
    (user / "broken" / "model.json").write_text("{not json")
    (user / "not-a-model").mkdir()
    models = ModelManagerLogic(user, shipped).listModels()
    assert [m.id for m in models] == ["tiny-unet", "tiny-resnet"]
    unet, resnet = models
    assert unet.shipped is True and unet.path == str(shipped / "tiny-unet") and unet.task == "segmentation"
    assert unet.labels == {"1": "anterior", "2": "posterior"} and unet.classes == ()
    assert resnet == ModelSummary(id="tiny-resnet", title="tiny-resnet", version="0.0.1", task="classification",
                                  modality="", description="", labels={}, classes=("benign", "malignant"),
                                  baseline=False, bundle=False, bundleTask="", fast=None,
                                  path=str(user / "tiny-resnet"), shipped=False)


def test_a_guided_network_is_marked_so_automatic_panels_leave_it_out(folders, packages):
    shipped, user = folders
    copy_package(packages["segmenter"], user / "guided", id="guided",
                 interactive={"channels": ["image", "positive", "negative"], "kind": "gaussian", "radius_mm": 3})
    copy_package(packages["segmenter"], user / "plain", id="plain")
    flags = {m.id: m.guided for m in ModelManagerLogic(user, shipped).listModels()}
    assert flags == {"guided": True, "plain": False}


def test_listing_agrees_with_the_engines_registry(tmp_path, packages, monkeypatch):
    from cadcore.registry.packages import list_models

    user = tmp_path / "user"
    copy_package(packages["classifier"], user / "tiny-resnet")
    monkeypatch.setenv("CAD_MODELS", str(user))
    manager = ModelManagerLogic()
    assert manager.userFolder == user and manager.shippedFolder == REPO / "CADExtension" / "cadcore" / "models"
    assert shippedModelsFolder() == manager.shippedFolder
    assert [(m.id, m.path) for m in manager.listModels()] == [(p.id, str(p.folder)) for p in list_models()]
    assert manager.engineEnvironment() == {"CAD_MODELS": str(user)}


def test_import_folder_then_verify_remove_and_the_engine_finds_it(folders, packages, monkeypatch):
    shipped, user = folders
    copy_package(packages["segmenter"], shipped / "tiny-unet")
    manager = ModelManagerLogic(user, shipped)
    entry = manager.importModel(packages["classifier"])
    assert entry.id == "tiny-resnet" and entry.path == str(user / "tiny-resnet") and not entry.shipped
    assert leftovers(user) == ["tiny-resnet"]  # no staging folder left
    assert manager.verifyModel("tiny-resnet") is True

    from cadcore.registry.packages import find_model

    monkeypatch.setenv("CAD_MODELS", str(user))
    assert find_model("tiny-resnet").verify() == sha256OfFile(user / "tiny-resnet" / "model.safetensors")

    weights = user / "tiny-resnet" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    assert manager.verifyModel("tiny-resnet") is False
    with pytest.raises(ModelError, match="unknown model 'nothing'"):
        manager.verifyModel("nothing")

    with pytest.raises(ModelError, match="shipped"):
        manager.removeModel("tiny-unet")
    assert (shipped / "tiny-unet").is_dir()
    manager.removeModel("tiny-resnet")
    assert leftovers(user) == [] and [m.id for m in manager.listModels()] == ["tiny-unet"]
    with pytest.raises(ModelError, match="unknown model"):
        manager.removeModel("tiny-resnet")


def test_import_refuses_overwrite_without_permission_and_shipped_ids(folders, packages, tmp_path):
    shipped, user = folders
    copy_package(packages["segmenter"], shipped / "tiny-unet")
    manager = ModelManagerLogic(user, shipped)
    manager.importModel(packages["classifier"])
    before = sha256OfFile(user / "tiny-resnet" / "model.json")
    newer = copy_package(packages["classifier"], tmp_path / "newer", version="0.0.2")
    with pytest.raises(ModelError, match="already installed; pass overwrite=True"):
        manager.importModel(newer)
    assert sha256OfFile(user / "tiny-resnet" / "model.json") == before
    assert manager.importModel(newer, overwrite=True).version == "0.0.2"
    assert leftovers(user) == ["tiny-resnet"]
    with pytest.raises(ModelError, match="shipped with the extension"):
        manager.importModel(packages["segmenter"], overwrite=True)
    assert leftovers(user) == ["tiny-resnet"]


@pytest.mark.parametrize(("change", "message"), [
    ("weights", "sha256 mismatch"),
    ("no-hash", "no valid weights sha256"),
    ("no-id", "lacks id"),
    ("bad-id", "not a safe folder name"),
    ("escaping-weights", "plain file name"),
    ("task", "unknown task"),
])
def test_import_refuses_unverifiable_packages(folders, packages, tmp_path, change, message):
    _, user = folders
    package = copy_package(packages["classifier"], tmp_path / "candidate")
    card = json.loads((package / "model.json").read_text())
    if change == "weights":
        (package / "model.safetensors").write_bytes((package / "model.safetensors").read_bytes() + b"x")
    elif change == "no-hash":
        del card["weights"]["sha256"]
    elif change == "no-id":
        del card["id"]
    elif change == "bad-id":
        card["id"] = "../escape"
    elif change == "escaping-weights":
        card["weights"]["file"] = "../model.safetensors"
    else:
        card["task"] = "detection"
    (package / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        ModelManagerLogic(user, folders[0]).importModel(package)
    assert leftovers(user) == [] and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("top", [None, "tiny-resnet-v1"], ids=["files-at-root", "one-top-folder"])
def test_import_zip(folders, packages, tmp_path, top):
    shipped, user = folders
    archive = zip_folder(packages["classifier"], tmp_path / "download.zip", top)
    manager = ModelManagerLogic(user, shipped)
    assert manager.importModel(archive).id == "tiny-resnet"
    assert leftovers(user) == ["tiny-resnet"] and manager.verifyModel("tiny-resnet")


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/cadextension-evil.txt", "ok/../../evil.txt",
                                    "C:/evil.txt", "link"])
def test_import_zip_refuses_escaping_members(folders, packages, tmp_path, member):
    shipped, user = folders
    archive = zip_folder(packages["classifier"], tmp_path / "evil.zip")
    with zipfile.ZipFile(archive, "a") as writer:
        if member == "link":
            info = zipfile.ZipInfo("model-link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            writer.writestr(info, "/etc/passwd")
        else:
            writer.writestr(member, "pwned")
    with pytest.raises(ModelError, match="refusing the archive member"):
        ModelManagerLogic(user, shipped).importModel(archive)
    assert leftovers(user) == [] and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/cadextension-evil.txt").exists()


def test_import_refuses_what_is_not_a_model(folders, tmp_path):
    shipped, user = folders
    manager = ModelManagerLogic(user, shipped)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="expected a model package folder"):
        manager.importModel(tmp_path / "notes.txt")
    with pytest.raises(ModelError, match="neither a model package"):
        manager.importModel(tmp_path / "empty")
    with pytest.raises(ModelError, match="no such file"):
        manager.importModel(tmp_path / "missing")
    assert leftovers(user) == []


def test_monai_bundle_is_copied_as_is_and_marked(folders, tmp_path):
    shipped, user = folders
    bundle = make_bundle(tmp_path / "spleen_ct_segmentation")
    manager = ModelManagerLogic(user, shipped)
    entry = manager.importModel(bundle)
    assert entry.id == "spleen_ct_segmentation" and entry.bundle is True
    assert entry.task == "segmentation" and entry.bundleTask == "Spleen segmentation"
    assert (entry.version, entry.modality, entry.labels) == ("0.5.2", "CT", {"0": "background", "1": "spleen"})
    assert entry.classes == () and entry.fast is None and entry.description == "a MONAI bundle"
    installed = user / "spleen_ct_segmentation"
    for path in bundle.rglob("*"):
        if path.is_file():
            assert (installed / path.relative_to(bundle)).read_bytes() == path.read_bytes()
    marker = json.loads((installed / BUNDLE_MARKER).read_text())
    assert marker["format"] == "monai-bundle" and set(marker["sha256"]) == {
        "configs/metadata.json", "configs/inference.json", "models/model.pt"}
    assert manager.verifyModel("spleen_ct_segmentation") is True
    (installed / "models" / "model.pt").write_bytes(b"changed")
    assert manager.verifyModel("spleen_ct_segmentation") is False
    with pytest.raises(ModelError, match="already installed"):
        manager.importModel(bundle)


def test_download_checks_the_hash_before_installing(folders, packages, tmp_path):
    shipped, user = folders
    archive = zip_folder(packages["classifier"], tmp_path / "tiny-resnet.zip", "tiny-resnet")
    digest = sha256OfFile(archive)
    manager = ModelManagerLogic(user, shipped)
    with pytest.raises(ModelError, match="sha256 mismatch"):
        manager.downloadModel(archive.as_uri(), "0" * 64)
    assert leftovers(user) == []
    with pytest.raises(ModelError, match="unsupported URL scheme 'ftp'"):
        manager.downloadModel("ftp://example.invalid/model.zip", digest)
    with pytest.raises(ModelError, match="64 hexadecimal"):
        manager.downloadModel(archive.as_uri(), "abc")
    progress: list[tuple[int, int | None]] = []
    entry = manager.downloadModel(archive.as_uri(), digest.upper(), onProgress=lambda *a: progress.append(a))
    assert entry.id == "tiny-resnet" and manager.verifyModel("tiny-resnet")
    assert leftovers(user) == ["tiny-resnet"]
    assert progress and progress[-1][0] == archive.stat().st_size


def test_download_file_leaves_nothing_on_a_wrong_hash_and_keeps_an_existing_file(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload" * 1000)
    destination = tmp_path / "out" / "file.bin"
    destination.parent.mkdir()
    destination.write_bytes(b"old")
    with pytest.raises(ModelError, match="sha256 mismatch"):
        downloadFile(source.as_uri(), "f" * 64, destination, chunkSize=1000)
    assert destination.read_bytes() == b"old" and sorted(p.name for p in destination.parent.iterdir()) == ["file.bin"]
    assert downloadFile(source.as_uri(), sha256OfFile(source), destination, chunkSize=1000) == destination
    assert destination.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in destination.parent.iterdir()) == ["file.bin"]
