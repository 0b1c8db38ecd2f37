"""The registry as a hostile package would try it: ids that are paths, links out of the package, weights that are
pickles or zips with a matching sha256, truncated weights, cards that do not fit their weights (one claiming a
43 GB network), a user model shadowing a shipped one, and a reader closing ``cad models``' pipe early.

Every refusal: exit 2, exactly one line on stderr naming the file, nothing installed (``$CAD_MODELS`` stays empty),
and nothing outside it touched. Packages are real (``make_tiny_segmentation_package``) and the CLI is the real one.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from peak_memory import TESTING

import cadcore.registry.locations
from cadcore.errors import CadError
from cadcore.registry.card_reader import is_model_id, parse_card
from cadcore.registry.locations import CARD_NAME, WEIGHTS_NAME, sha256_of
from cadcore.registry.packages import ModelPackage, find_model, read_card, save_package
from conftest import edit_card, make_tiny_classification_package, make_tiny_segmentation_package, run_cad

ENGINE = Path(__file__).resolve().parents[3] / "CADExtension"


def assert_refused(code: int, err: str, *words: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, and the given words (the file, the problem) in it."""
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)




def replace_weights(folder: Path, data: bytes) -> Path:
    """Swap in other weight bytes and pin their sha256 in the card, as an attacker controlling both files would."""
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(data)
    card = json.loads((folder / CARD_NAME).read_text())
    card["weights"]["sha256"] = sha256_of(weights)
    (folder / CARD_NAME).write_text(json.dumps(card))
    return weights


# --- ids ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", ["tiny", "hippocampus-unet", "a.b_c-1", "X9"])
def test_plain_ids_accepted(model_id: str) -> None:
    assert is_model_id(model_id)


@pytest.mark.parametrize("model_id", ["", ".", "..", "../x", "a/b", "/tmp/x", "a\\b", ".hidden", "-x", "my model",
                                      "x" * 129, 7, None])
def test_card_id_must_be_a_plain_name(model_id: object) -> None:
    card = {"id": model_id, "version": "1", "task": "segmentation", "network": {"name": "DynUNet"},
            "inference": {"patch_size": [16, 16, 16]}}
    with pytest.raises(CadError, match="'id'") as caught:
        parse_card(card, "/x/model.json")
    assert str(caught.value).startswith("/x/model.json: ")


def test_absolute_id_with_force_deletes_nothing(tmp_path: Path, registry: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """An absolute id used to make ``import --force`` delete that folder and fill it with model files."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "evil")
    edit_card(package.folder, id=str(victim))
    code, _, err = run_cad(capsys, "models", "import", str(package.folder), "--force")
    assert_refused(code, err, str(package.folder / CARD_NAME), "'id'")
    assert [p.name for p in victim.iterdir()] == ["thesis.tex"]
    assert list(registry.iterdir()) == []


@pytest.mark.parametrize("model_id", ["../escaped", "nested/escaped"])
def test_path_ids_refused(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str], model_id: str) -> None:
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "evil")
    edit_card(package.folder, id=model_id)
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(package.folder / CARD_NAME), "'id'")
    assert list(registry.iterdir()) == [] and not (tmp_path / "escaped").exists()


def test_install_target_is_a_direct_child(registry: Path) -> None:
    """The second lock: even an id that got past the card reader cannot leave the user folder."""
    for model_id in ("..", "../x", "a/b", str(registry.parent / "x"), ""):
        with pytest.raises(CadError, match="outside the model folder"):
            cadcore.registry.locations.install_target(model_id)
    assert cadcore.registry.locations.install_target("ok") == registry / "ok"


@pytest.mark.parametrize("field", ["../outside.safetensors", "absolute", "sha256"])
def test_weights_entry_cannot_point_outside(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str],
                                            field: str) -> None:
    """``weights.file`` is a plain name in the package: ``../x`` or an absolute path would verify and load any file;
    a sha256 that is not 64 hex digits pins nothing."""
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "pointing")
    outside = tmp_path / "downloads" / "outside.safetensors"
    outside.write_bytes(package.weights_path.read_bytes())
    weights = dict(package.card.to_dict()["weights"])
    if field == "sha256":
        weights["sha256"] = "any"
    else:
        weights["file"] = field if field != "absolute" else str(outside)
    edit_card(package.folder, weights=weights)
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(package.folder / CARD_NAME), f"'weights.{'sha256' if field == 'sha256' else 'file'}'")
    assert list(registry.iterdir()) == []


# --- links ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_symlink_inside_package_refused(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str],
                                        kind: str) -> None:
    """A link inside a package would copy whatever it points at into the registry (``weights -> ~/.ssh``)."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE KEY")
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "linked")
    (package.folder / "docs").mkdir()
    link = package.folder / "docs" / ("key" if kind == "file" else "keys")
    link.symlink_to(secret / "id_rsa" if kind == "file" else secret)
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(link), "symbolic link")
    assert list(registry.iterdir()) == []


def test_package_folder_itself_a_symlink(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = make_tiny_segmentation_package(tmp_path / "real" / "tiny-link")
    link = tmp_path / "tiny-link"
    link.symlink_to(package.folder)
    code, _, err = run_cad(capsys, "models", "import", str(link))
    assert_refused(code, err, str(link), "symbolic link")
    assert list(registry.iterdir()) == []


def test_fifo_inside_package_refused(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fifo would hang the copy forever."""
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "fifo")
    os.mkfifo(package.folder / "pipe")
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(package.folder / "pipe"), "not a regular file")
    assert list(registry.iterdir()) == []


# --- weights that are not safetensors ---------------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs code (touches a marker file): what a malicious pickle does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


def test_pickle_weights_with_matching_sha256(tmp_path: Path, registry: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A pickle (``torch.save``) pinned by the card is refused at import and at load, and never unpickled."""
    import torch

    package = make_tiny_segmentation_package(tmp_path / "downloads" / "pickled")
    marker = tmp_path / "code-ran"
    state = dict(package.load_state_dict())
    state["payload"] = _Payload(marker)
    torch.save(state, tmp_path / "pickle.pt")
    weights = replace_weights(package.folder, (tmp_path / "pickle.pt").read_bytes())
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(weights), "not a safetensors file")
    code, _, err = run_cad(capsys, "models", "verify", str(package.folder))
    assert_refused(code, err, str(weights), "not a safetensors file")
    with pytest.raises(CadError, match="not a safetensors file"):
        ModelPackage(package.folder, read_card(package.folder)).load_state_dict()
    assert not marker.exists() and list(registry.iterdir()) == []


def test_plain_pickle_weights(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "pickled2")
    weights = replace_weights(package.folder, pickle.dumps({"weight": [1.0, 2.0]}))
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(weights), "not a safetensors file")
    assert list(registry.iterdir()) == []


def test_zip_renamed_safetensors(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "zipped")
    with zipfile.ZipFile(tmp_path / "w.zip", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    weights = replace_weights(package.folder, (tmp_path / "w.zip").read_bytes())
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(weights), "not a safetensors file")
    assert list(registry.iterdir()) == []


@pytest.mark.parametrize("cut", [1, 4096, "header"])
def test_truncated_safetensors(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str],
                               cut: int | str) -> None:
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "truncated")
    data = package.weights_path.read_bytes()
    kept = data[:20] if cut == "header" else data[:-int(cut)]
    weights = replace_weights(package.folder, kept)
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(weights), "not a safetensors file")
    assert list(registry.iterdir()) == []


def test_trailing_bytes_refused(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bytes after the last tensor are something else hiding in the file."""
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "trailing")
    weights = replace_weights(package.folder, package.weights_path.read_bytes() + b"PK\x03\x04 hidden")
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(weights), "trailing bytes")
    assert list(registry.iterdir()) == []


# --- weights that do not fit the card ---------------------------------------------------------------------------------


def test_card_filters_changed(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A card edited by hand (filters [4, 8, 16] -> [4, 8, 32]) no longer fits its weights: the first tensor that
    differs is named, at import and at load, before any real network is built."""
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "refiltered")
    network = package.card.to_dict()["network"]
    network["params"]["filters"] = [4, 8, 32]
    edit_card(package.folder, network=network)
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(package.weights_path), "has shape", "'network'")
    assert list(registry.iterdir()) == []
    code, _, err = run_cad(capsys, "models", "verify", str(package.folder))
    assert_refused(code, err, str(package.weights_path), "has shape")


def test_missing_and_extra_tensors(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "tensors")
    state = package.load_state_dict()
    first = next(iter(state))
    fewer = save_package(tmp_path / "downloads" / "fewer", package.card.to_dict() | {"id": "fewer"},
                         {k: v for k, v in state.items() if k != first})
    code, _, err = run_cad(capsys, "models", "import", str(fewer.folder))
    assert_refused(code, err, str(fewer.weights_path), "lacks tensor", repr(first))
    more = save_package(tmp_path / "downloads" / "more", package.card.to_dict() | {"id": "more"},
                        {**state, "zzz.extra": state[first].clone()})
    code, _, err = run_cad(capsys, "models", "import", str(more.folder))
    assert_refused(code, err, str(more.weights_path), "'zzz.extra'")
    assert list(registry.iterdir()) == []


def test_every_stage_is_checked(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A card's own fast network and an ensemble's members are checked too, each under its prefix."""
    from cadcore.registry.networks import build_network, dynunet_spec

    fast_spec = dynunet_spec(1, 3, [2, 4, 8], [1, 2, 2])
    main = make_tiny_segmentation_package(tmp_path / "main")
    card = main.card.to_dict() | {"id": "with-fast", "fast": {"spacing": [2.0, 2.0, 2.0], "network": fast_spec}}
    fast_state = {f"fast.{k}": v for k, v in build_network(fast_spec).state_dict().items()}
    good = save_package(tmp_path / "with-fast", card, {**main.load_state_dict(), **fast_state})
    good.verify()
    bad = save_package(tmp_path / "fast-missing", card | {"id": "fast-missing"}, main.load_state_dict())
    code, _, err = run_cad(capsys, "models", "import", str(bad.folder))
    assert_refused(code, err, str(bad.weights_path), "lacks tensor 'fast.", "'fast.network'")

    single = make_tiny_classification_package(tmp_path / "single")
    members = {f"{m}.{k}": v for m in ("m0", "m1") for k, v in single.load_state_dict().items()}
    card = single.card.to_dict() | {"id": "ensemble", "ensemble": {"members": ["m0", "m1"]}}
    save_package(tmp_path / "ensemble", card, members).verify()
    half = save_package(tmp_path / "half", card | {"id": "half"},
                        {k: v for k, v in members.items() if k.startswith("m0.")})
    code, _, err = run_cad(capsys, "models", "import", str(half.folder))
    assert_refused(code, err, str(half.weights_path), "lacks tensor 'm1.")
    assert list(registry.iterdir()) == []


def test_unbuildable_network_named_in_card(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = make_tiny_segmentation_package(tmp_path / "downloads" / "nonsense")
    network = package.card.to_dict()["network"]
    network["params"]["strides"] = [1, 2]  # three filters, two strides: MONAI refuses
    edit_card(package.folder, network=network)
    code, _, err = run_cad(capsys, "models", "import", str(package.folder))
    assert_refused(code, err, str(package.folder / CARD_NAME), "'network'")


def test_baseline_needs_a_safetensors_file(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Baseline classifiers store feature arrays (no network to compare with), but still only as safetensors."""
    import shutil

    shipped = cadcore.registry.locations.SHIPPED_MODELS / "adrenal-rf"
    if not shipped.is_dir():
        pytest.skip(f"no shipped baseline in {shipped}")
    copy = tmp_path / "downloads" / "my-rf"
    shutil.copytree(shipped, copy)
    edit_card(copy, id="my-rf")
    assert find_model(copy).verify()
    weights = replace_weights(copy, pickle.dumps({"train_features": [[1.0]]}))
    code, _, err = run_cad(capsys, "models", "import", str(copy))
    assert_refused(code, err, str(weights), "not a safetensors file")
    assert list(registry.iterdir()) == []


HUGE_CARD_SCRIPT = """
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a 43 GB allocation fails at once instead of swapping
from cadcore.cli import main
started = time.perf_counter()
codes = [main(["models", "import", sys.argv[1]]), main(["models", "verify", sys.argv[1]]),
         main(["segment", sys.argv[2], "-m", sys.argv[1], "-o", sys.argv[3], "--device", "cpu"])]
from peak_memory import peak_kib
print(codes, round(time.perf_counter() - started, 2), peak_kib())
"""


def test_huge_network_card_refused_before_allocating(tmp_path: Path, registry: Path) -> None:
    """A card claiming a 20 000-channel layer beside a small weights file: the real network would need 43 GB. It is
    refused from the header and a meta-device build, in well under a second after imports, with nothing allocated
    (the process runs under a 6 GB address-space limit and its peak memory is checked)."""
    import numpy as np
    import SimpleITK as sitk

    package = make_tiny_segmentation_package(tmp_path / "downloads" / "huge")
    network = package.card.to_dict()["network"]
    network["params"]["filters"] = [20000, 8, 16]
    edit_card(package.folder, network=network)
    image = tmp_path / "in.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((12, 12, 12), np.float32)), str(image))
    output = tmp_path / "out" / "seg.nii.gz"
    output.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ENGINE), TESTING, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", HUGE_CARD_SCRIPT, str(package.folder), str(image), str(output)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert "]" in result.stdout, result.stderr[-3000:]
    codes, seconds, peak_kib = result.stdout.split("]")[0] + "]", *result.stdout.split("]")[1].split()
    assert json.loads(codes) == [2, 2, 2], result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and all(str(package.weights_path) in line and "has shape" in line for line in lines), lines
    assert float(seconds) < 60 and int(peak_kib) < 3 << 20, (seconds, peak_kib)
    assert list(registry.iterdir()) == [] and list(output.parent.iterdir()) == []


# --- shadowing --------------------------------------------------------------------------------------------------------


def test_shadowing_refused_without_force_and_listed(tmp_path: Path, registry: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Importing a package whose id a shipped model has would print "imported" and change nothing; it is refused,
    and with --force the copy is installed and listed as shadowed (the shipped, vetted model stays in use)."""
    shipped_root = tmp_path / "shipped"
    shipped = make_tiny_segmentation_package(shipped_root / "same-id", description="shipped")
    monkeypatch.setattr(cadcore.registry.locations, "SHIPPED_MODELS", shipped_root)
    user = make_tiny_segmentation_package(tmp_path / "downloads" / "same-id", description="user", version="9.9")
    code, _, err = run_cad(capsys, "models", "import", str(user.folder))
    assert_refused(code, err, str(user.folder / CARD_NAME), "a shipped model has this id", "--force")
    assert list(registry.iterdir()) == []
    code, out, err = run_cad(capsys, "models", "import", str(user.folder), "--force")
    assert code == 0, err
    assert find_model("same-id").folder == shipped.folder
    code, out, err = run_cad(capsys, "models", "list")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("same-id")]
    assert len(lines) == 2, out
    assert str(shipped.folder) in lines[0] and "shadowed" not in lines[0]
    assert str(registry / "same-id") in lines[1] and lines[1].endswith("(shadowed by the shipped model of this id: "
                                                                        "not used)")


def test_real_shipped_id_refused(tmp_path: Path, registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (cadcore.registry.locations.SHIPPED_MODELS / "hippocampus-unet").is_dir():
        pytest.skip("hippocampus-unet is not shipped")
    user = make_tiny_segmentation_package(tmp_path / "downloads" / "hippocampus-unet")
    code, _, err = run_cad(capsys, "models", "import", str(user.folder))
    assert_refused(code, err, "a shipped model has this id")
    assert list(registry.iterdir()) == []


# --- a reader that stops early ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["show", "hippocampus-unet"], ["list"]])
def test_closed_pipe_is_not_a_traceback(tmp_path: Path, registry: Path, command: list[str]) -> None:
    """``cad models show X | head``: the reader closes the pipe before cad writes; cad stops quietly."""
    if not (cadcore.registry.locations.SHIPPED_MODELS / "hippocampus-unet").is_dir():
        pytest.skip("hippocampus-unet is not shipped")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ENGINE), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "cadcore", "models", *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `head` exiting: every write cad makes now fails with EPIPE
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr  # as a shell tool stopped by SIGPIPE
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and stderr == "", stderr


def test_an_unchanged_file_is_hashed_once_and_a_changed_one_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """``cad segment`` verifies, reads the image, then loads: the load reuses the verification only while the weights
    file is the same (device, inode, size, mtime); bytes written in between are hashed again and refused."""
    import cadcore.registry.packages as packages

    package = make_tiny_segmentation_package(tmp_path / "tiny")
    hashed: list[Path] = []
    monkeypatch.setattr(packages, "sha256_of", lambda path: hashed.append(path) or sha256_of(path))
    package.verify()
    package.load_state_dict()
    assert len(hashed) == 1
    weights = package.weights_path
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1_000_000))
    with pytest.raises(CadError, match="sha256 mismatch"):
        package.load_state_dict()
    assert len(hashed) == 2
