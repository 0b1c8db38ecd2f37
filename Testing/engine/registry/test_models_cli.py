"""``cad models list|show|verify|import`` and the registry rules behind them.

The registry is where users (and the Slicer module) find models by id, so its contract matters: shipped packages win
over user packages, unverified or altered weights are refused, and an import never silently replaces a package.
Every failure is exit 2 with one line on stderr naming the file, and nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import cadcore.registry.locations
import cadcore.registry.packages
from cadcore.registry.locations import CARD_NAME, sha256_of
from cadcore.registry.packages import ModelPackage, find_model
from conftest import edit_card, make_tiny_segmentation_package, run_cad


def assert_one_line_error(code: int, err: str, *words: str) -> None:
    """The CLI contract for bad input: exit 2, exactly one line on stderr, containing the given words."""
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    for word in words:
        assert word in err, (word, err)




def corrupt_weights(package: ModelPackage) -> None:
    """Flip bits in the last tensor: still a valid safetensors file, but a different hash."""
    data = bytearray(package.weights_path.read_bytes())
    data[-1] ^= 0xFF
    package.weights_path.write_bytes(bytes(data))


# --- list / show / verify -----------------------------------------------------------------------------------------


def test_list_shows_user_package(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A package dropped into $CAD_MODELS is listed with its id, version and task on one line."""
    make_tiny_segmentation_package(registry / "tiny-listed", version="1.2.3")
    code, out, err = run_cad(capsys, "models", "list")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("tiny-listed")]
    assert len(lines) == 1, out
    assert lines[0].split()[:3] == ["tiny-listed", "1.2.3", "segmentation"]
    assert str(registry / "tiny-listed") in lines[0]


def test_list_skips_broken_package(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One bad card in the user folder must not break listing the others."""
    make_tiny_segmentation_package(registry / "good-one")
    broken = make_tiny_segmentation_package(registry / "broken-one")
    edit_card(broken.folder, task="detection")
    code, out, err = run_cad(capsys, "models", "list")
    assert code == 0, err
    assert "good-one" in out and "broken-one" not in out


def test_show_prints_card_json(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``show ID`` prints the card as JSON (the Slicer module parses it)."""
    package = make_tiny_segmentation_package(registry / "tiny-show")
    code, out, err = run_cad(capsys, "models", "show", "tiny-show")
    assert code == 0, err
    assert json.loads(out) == package.card.raw


def test_verify_ok_prints_sha256(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = make_tiny_segmentation_package(registry / "tiny-verify")
    code, out, err = run_cad(capsys, "models", "verify", "tiny-verify")
    assert code == 0, err
    assert "OK" in out and sha256_of(package.weights_path) in out


def test_verify_altered_weights(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Altered weights are refused before anything loads them."""
    package = make_tiny_segmentation_package(registry / "tiny-altered")
    corrupt_weights(package)
    code, _, err = run_cad(capsys, "models", "verify", "tiny-altered")
    assert_one_line_error(code, err, "sha256 mismatch", str(package.weights_path))


def test_verify_card_without_sha256(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A card that does not pin its weights is not trusted either."""
    package = make_tiny_segmentation_package(registry / "tiny-unpinned")
    edit_card(package.folder, weights={"file": "model.safetensors", "format": "safetensors"})
    code, _, err = run_cad(capsys, "models", "verify", "tiny-unpinned")
    assert_one_line_error(code, err, "sha256", str(package.folder / CARD_NAME))


def test_verify_unknown_id(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cad(capsys, "models", "verify", "no-such-model")
    assert_one_line_error(code, err, "unknown model", "no-such-model")


# --- import ----------------------------------------------------------------------------------------------------------


def test_import_copies_and_resolves_by_id(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Import copies the package into $CAD_MODELS/<id>; the id then resolves there, and the copy verifies."""
    source = make_tiny_segmentation_package(tmp_path / "downloads" / "tiny-import")
    code, out, err = run_cad(capsys, "models", "import", str(source.folder))
    assert code == 0, err
    target = registry / "tiny-import"
    assert "tiny-import" in out and str(target) in out
    found = find_model("tiny-import")
    assert found.folder == target
    assert found.card.raw == source.card.raw
    assert found.verify() == source.card.raw["weights"]["sha256"]


def test_import_twice_needs_force(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second import names the installed folder and leaves it alone; ``--force`` replaces it."""
    source = make_tiny_segmentation_package(tmp_path / "downloads" / "tiny-twice")
    assert run_cad(capsys, "models", "import", str(source.folder))[0] == 0
    target = registry / "tiny-twice"
    marker = target / "NOTES.md"
    marker.write_text("installed copy")
    code, _, err = run_cad(capsys, "models", "import", str(source.folder))
    assert_one_line_error(code, err, str(target), "--force")
    assert marker.read_text() == "installed copy"
    code, _, err = run_cad(capsys, "models", "import", str(source.folder), "--force")
    assert code == 0, err
    assert not marker.exists()  # replaced, not merged
    assert find_model("tiny-twice").folder == target


def test_import_folder_without_card(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "just-a-folder"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    code, _, err = run_cad(capsys, "models", "import", str(folder))
    assert_one_line_error(code, err, "not a model package", str(folder))
    assert list(registry.iterdir()) == []


def test_import_unknown_task(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A card whose task cadcore does not know is refused, with the card named."""
    package = make_tiny_segmentation_package(tmp_path / "odd-task")
    edit_card(package.folder, task="detection")
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_one_line_error(code, err, "unknown task", "detection", str(package.folder / CARD_NAME))
    assert list(registry.iterdir()) == []
    code, _, err = run_cad(capsys, "models", "show", str(package.folder))
    assert_one_line_error(code, err, "unknown task")


def test_import_altered_weights_installs_nothing(tmp_path: Path, registry: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Import verifies first: a corrupt download never lands in the registry."""
    package = make_tiny_segmentation_package(tmp_path / "tiny-corrupt")
    corrupt_weights(package)
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_one_line_error(code, err, "sha256 mismatch")
    assert list(registry.iterdir()) == []


# --- shipped before user -------------------------------------------------------------------------------------------


def test_real_shipped_model_wins_over_user_copy(registry: Path) -> None:
    """A user package cannot shadow a shipped one of the same id (shipped models are the vetted ones)."""
    shipped_root = cadcore.registry.locations.SHIPPED_MODELS
    shipped = [p for p in cadcore.registry.packages.list_models() if shipped_root in p.folder.parents]
    if not shipped:
        pytest.skip(f"no shipped model in {shipped_root}")
    model_id = shipped[0].id
    make_tiny_segmentation_package(registry / model_id, id=model_id, description="user impostor")
    assert find_model(model_id).folder == shipped[0].folder


def test_shipped_folder_wins_over_user_folder(tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same rule with a stand-in shipped folder, so it is checked even while no model ships."""
    shipped_root = tmp_path / "shipped"
    shipped = make_tiny_segmentation_package(shipped_root / "same-id", description="shipped")
    make_tiny_segmentation_package(registry / "same-id", description="user")
    make_tiny_segmentation_package(registry / "user-only")
    monkeypatch.setattr(cadcore.registry.locations, "SHIPPED_MODELS", shipped_root)
    assert find_model("same-id").folder == shipped.folder
    assert find_model("user-only").folder == registry / "user-only"
    assert sorted(p.id for p in cadcore.registry.packages.list_models()) == ["same-id", "user-only"]


# --- cad segment refuses a non-segmentation model -------------------------------------------------------------------


def test_segment_refuses_classification_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A classifier's card must not be run as a segmenter (its output is not a labelmap)."""
    package = make_tiny_segmentation_package(tmp_path / "tiny-classifier", task="classification")
    rng = np.random.default_rng(0)
    source = tmp_path / "in.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(100, 10, (12, 12, 12)).astype(np.float32)), str(source))
    output = tmp_path / "out" / "seg.nii.gz"
    output.parent.mkdir()
    code, _, err = run_cad(capsys, "segment", str(source), "-m", str(package.folder), "-o", str(output),
                           "--device", "cpu")
    assert_one_line_error(code, err, "classification", "segmentation model", str(package.folder))
    assert list(output.parent.iterdir()) == []
