"""Builders of bad inputs for the corpus test: each makes one broken or hostile input in a folder and returns the
``cad`` arguments that must refuse it, the file the one-line error must name, and a word it must contain.

Kept apart from the test so the list reads as a table of what ``cad`` refuses (docs/reliability.md mirrors it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Models:
    segmentation: Path  # a tiny segmentation package folder
    classification: Path  # a tiny classifier package folder


@dataclass(frozen=True)
class Refusal:
    """What one bad input must give: the argv, the path the one stderr line names, and a word it contains."""

    argv: list[str]
    names: Path | str
    word: str


Builder = Callable[[Path, Models], Refusal]
CORPUS: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    def register(builder: Builder) -> Builder:
        assert name not in CORPUS, name
        CORPUS[name] = builder
        return builder
    return register


def blob(seed: int = 0, shape: tuple[int, int, int] = (12, 14, 16)) -> sitk.Image:
    """A small valid MR-like volume with a bright blob (K, J, I array)."""
    rng = np.random.default_rng(seed)
    array = rng.normal(100, 10, size=shape).astype(np.float32)
    array[4:8, 5:9, 6:10] += 200
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 1.5))
    return image


def write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def good(folder: Path, name: str = "scan.nii.gz") -> Path:
    return write(blob(), folder / name)


def segment(source: Path | str, model: Path | str, output: Path, *extra: str) -> list[str]:
    return ["segment", str(source), "-m", str(model), "-o", str(output), "--device", "cpu", *extra]


def edited_copy(package: Path, folder: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of a package whose model.json was edited (as a user or a broken download would)."""
    copy = folder / f"edited-{package.name}"
    shutil.copytree(package, copy)
    card = json.loads((copy / "model.json").read_text())
    edit(card)
    (copy / "model.json").write_text(json.dumps(card))
    return copy


# --- cad segment: the input volume ---------------------------------------------------------------------------------


@case("segment: input file missing")
def _missing(d: Path, m: Models) -> Refusal:
    return Refusal(segment(d / "absent.nii.gz", m.segmentation, d / "out.nii.gz"), d / "absent.nii.gz", "not found")


@case("segment: truncated .nii.gz")
def _truncated(d: Path, m: Models) -> Refusal:
    source = good(d)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "cannot read")


@case("segment: gzip of garbage")
def _garbage(d: Path, m: Models) -> Refusal:
    import gzip

    source = d / "garbage.nii.gz"
    source.write_bytes(gzip.compress(b"not an image at all" * 40))
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "cannot read")


@case("segment: 2D image")
def _flat(d: Path, m: Models) -> Refusal:
    source = write(sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(30, 30)).astype(np.float32)),
                   d / "flat.nii.gz")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "3D")


@case("segment: 4D image")
def _four_d(d: Path, m: Models) -> Refusal:
    source = write(sitk.JoinSeries([blob(seed=s) for s in range(3)]), d / "four_d.nii.gz")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "3D")


@case("segment: vector (RGB) voxels")
def _vector(d: Path, m: Models) -> Refusal:
    array = np.random.default_rng(0).integers(0, 255, size=(8, 9, 10, 3)).astype(np.uint8)
    source = write(sitk.GetImageFromArray(array, isVector=True), d / "rgb.mha")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "components")


@case("segment: NaN voxels")
def _nan(d: Path, m: Models) -> Refusal:
    array = sitk.GetArrayFromImage(blob())
    array[3, 4, 5] = np.nan
    source = write(sitk.GetImageFromArray(array), d / "nan.nii.gz")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "NaN")


@case("segment: infinite voxels in a .mha")
def _inf(d: Path, m: Models) -> Refusal:
    array = sitk.GetArrayFromImage(blob())
    array[2, 2, 2] = np.inf
    source = write(sitk.GetImageFromArray(array), d / "inf.mha")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "infinite")


@case("segment: constant (empty) image")
def _constant(d: Path, m: Models) -> Refusal:
    source = write(sitk.GetImageFromArray(np.zeros((12, 12, 12), np.float32)), d / "zeros.nii.gz")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "empty")


@case("segment: single-slice volume")
def _one_slice(d: Path, m: Models) -> Refusal:
    source = write(sitk.GetImageFromArray(np.random.default_rng(1).normal(size=(1, 20, 20)).astype(np.float32)),
                   d / "slice.nii.gz")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "single-slice")


@case("segment: a text file named .nrrd")
def _text_nrrd(d: Path, m: Models) -> Refusal:
    source = d / "notes.nrrd"
    source.write_text("this is not NRRD\n")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "cannot read")


@case("segment: empty folder given as a DICOM series")
def _empty_dicom(d: Path, m: Models) -> Refusal:
    folder = d / "dicom"
    folder.mkdir()
    (folder / "readme.txt").write_text("no DICOM here")
    return Refusal(segment(folder, m.segmentation, d / "out.nii.gz"), folder, "no DICOM series")


# --- cad segment: outputs and options ------------------------------------------------------------------------------


@case("segment: output exists without --force")
def _exists(d: Path, m: Models) -> Refusal:
    output = d / "out.nii.gz"
    output.write_bytes(b"user's previous result")
    return Refusal(segment(good(d), m.segmentation, output), output, "--force")


@case("segment: output sidecar exists without --force")
def _sidecar_exists(d: Path, m: Models) -> Refusal:
    sidecar = d / "out.nii.gz.json"
    sidecar.write_text("{}")
    return Refusal(segment(good(d), m.segmentation, d / "out.nii.gz"), sidecar, "--force")


@case("segment: unsupported output format")
def _bad_suffix(d: Path, m: Models) -> Refusal:
    return Refusal(segment(good(d), m.segmentation, d / "out.txt"), d / "out.txt", "unsupported output format")


@case("segment: output folder missing")
def _no_folder(d: Path, m: Models) -> Refusal:
    return Refusal(segment(good(d), m.segmentation, d / "nowhere" / "out.nii.gz"), d / "nowhere", "does not exist")


@case("segment: --probabilities with an unsupported format")
def _prob_suffix(d: Path, m: Models) -> Refusal:
    return Refusal(segment(good(d), m.segmentation, d / "out.nii.gz", "--probabilities", str(d / "p.png")),
                   d / "p.png", "unsupported output format")


@case("segment: --png that is not a .png")
def _png_suffix(d: Path, m: Models) -> Refusal:
    return Refusal(segment(good(d), m.segmentation, d / "out.nii.gz", "--png", str(d / "overlay.jpg")),
                   d / "overlay.jpg", "unsupported output format")


@case("segment: --overlap outside [0, 1)")
def _overlap(d: Path, m: Models) -> Refusal:
    return Refusal(segment(good(d), m.segmentation, d / "out.nii.gz", "--overlap", "1.5"), "--overlap", "[0, 1)")


@case("segment: --fast with a model that has no fast resolution")
def _fast(d: Path, m: Models) -> Refusal:
    return Refusal(segment(good(d), m.segmentation, d / "out.nii.gz", "--fast"), m.segmentation / "model.json",
                   "no fast resolution")


@case("segment: unknown --device")
def _device(d: Path, m: Models) -> Refusal:
    argv = segment(good(d), m.segmentation, d / "out.nii.gz")
    argv[argv.index("--device") + 1] = "tpu"
    return Refusal(argv, "tpu", "unknown device")


# --- cad segment: the model ----------------------------------------------------------------------------------------


@case("segment: unknown model id")
def _unknown_model(d: Path, m: Models) -> Refusal:
    return Refusal(segment(good(d), "no-such-model", d / "out.nii.gz"), "no-such-model", "unknown model")


@case("segment: a classification model")
def _wrong_task(d: Path, m: Models) -> Refusal:
    return Refusal(segment(good(d), m.classification, d / "out.nii.gz"), m.classification, "classification model")


@case("segment: weights altered after the card was written (sha256)")
def _altered(d: Path, m: Models) -> Refusal:
    copy = d / "altered"
    shutil.copytree(m.segmentation, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), weights, "sha256 mismatch")


@case("segment: weights file missing")
def _no_weights(d: Path, m: Models) -> Refusal:
    copy = d / "no-weights"
    shutil.copytree(m.segmentation, copy)
    (copy / "model.safetensors").unlink()
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.safetensors", "missing")


@case("segment: card without a weights sha256")
def _no_sha(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card["weights"].pop("sha256"))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.json", "unverified")


@case("segment: model folder without model.json")
def _no_card(d: Path, m: Models) -> Refusal:
    folder = d / "empty-model"
    folder.mkdir()
    return Refusal(segment(good(d), folder, d / "out.nii.gz"), folder, "not a model package")


@case("segment: model.json that is not JSON")
def _bad_json(d: Path, m: Models) -> Refusal:
    copy = d / "bad-json"
    shutil.copytree(m.segmentation, copy)
    (copy / "model.json").write_text("{ not json")
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.json", "cannot parse")


@case("segment: card lacks its network")
def _card_missing(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card.pop("network"))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.json", "lacks required fields")


@case("segment: card with an unknown task")
def _card_task(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card.update(task="detection"))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.json", "unknown task")


@case("segment: card with a wrong-typed field (patch size as text)")
def _card_type(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card["inference"].update(patch_size="16,16,16"))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.json", "'inference.patch_size'")


@case("segment: card with a label colour out of range")
def _card_colour(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card["labels"][0].update(color=[255, 0, 0]))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.json", "'labels[0].color'")


@case("segment: card with an unknown network class")
def _card_network(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card["network"].update(name="os.system"))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), "os.system", "unsupported network")
