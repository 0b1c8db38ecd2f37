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


# --- cad classify --------------------------------------------------------------------------------------------------


def classify(source: Path, model: Path | str, output: Path, *extra: str) -> list[str]:
    return ["classify", str(source), "-m", str(model), "-o", str(output), "--device", "cpu", *extra]


def lesion_mask(d: Path, value: int = 1, image: sitk.Image | None = None) -> Path:
    reference = image if image is not None else blob()
    array = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
    array[4:8, 5:9, 6:10] = value
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(reference)
    return write(mask, d / "mask.nii.gz")


@case("classify: --mask and --center together")
def _mask_and_centre(d: Path, m: Models) -> Refusal:
    return Refusal(classify(good(d), m.classification, d / "r.json", "--mask", str(lesion_mask(d)), "--center",
                            "0,0,0"), "--center", "not both")


@case("classify: --center with two numbers")
def _centre_two(d: Path, m: Models) -> Refusal:
    return Refusal(classify(good(d), m.classification, d / "r.json", "--center", "1,2"), "--center", "1 or 3 values")


@case("classify: --center outside the volume")
def _centre_outside(d: Path, m: Models) -> Refusal:
    source = good(d)
    return Refusal(classify(source, m.classification, d / "r.json", "--center", "500,500,500"), source, "outside")


@case("classify: --label absent from the mask")
def _label_absent(d: Path, m: Models) -> Refusal:
    mask = lesion_mask(d)
    return Refusal(classify(good(d), m.classification, d / "r.json", "--mask", str(mask), "--label", "7"), mask,
                   "not in the mask")


@case("classify: mask on another grid")
def _mask_grid(d: Path, m: Models) -> Refusal:
    moved = blob()
    moved.SetOrigin((5.0, 0.0, 0.0))
    mask = lesion_mask(d, image=moved)
    return Refusal(classify(good(d), m.classification, d / "r.json", "--mask", str(mask)), mask, "grid")


@case("classify: a segmentation model")
def _classify_wrong_task(d: Path, m: Models) -> Refusal:
    return Refusal(classify(good(d), m.segmentation, d / "r.json"), m.segmentation, "segmentation model")


@case("classify: --heatmap-class beyond the classes")
def _heatmap_class(d: Path, m: Models) -> Refusal:
    return Refusal(classify(good(d), m.classification, d / "r.json", "--heatmap", str(d / "h.nii.gz"),
                            "--heatmap-class", "9"), "--heatmap-class", "not a class")


@case("classify: --heatmap with an unsupported format")
def _heatmap_suffix(d: Path, m: Models) -> Refusal:
    return Refusal(classify(good(d), m.classification, d / "r.json", "--heatmap", str(d / "h.png")), d / "h.png",
                   "unsupported output format")


@case("classify: result exists without --force")
def _result_exists(d: Path, m: Models) -> Refusal:
    result = d / "r.json"
    result.write_text("{}")
    return Refusal(classify(good(d), m.classification, result), result, "--force")


@case("classify: mask file missing")
def _mask_missing(d: Path, m: Models) -> Refusal:
    return Refusal(classify(good(d), m.classification, d / "r.json", "--mask", str(d / "nomask.nii.gz")),
                   d / "nomask.nii.gz", "not found")


# --- cad evaluate --------------------------------------------------------------------------------------------------


def cases_folder(d: Path, n: int = 2, shift_label: bool = False) -> Path:
    root = d / "data"
    for index in range(n):
        image = blob(seed=index)
        write(image, root / "images" / f"case{index}.nii.gz")
        label = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) > 250).astype(np.uint8))
        label.CopyInformation(image)
        if shift_label and index == n - 1:
            label.SetOrigin((3.0, 0.0, 0.0))
        write(label, root / "labels" / f"case{index}.nii.gz")
    return root


def evaluate(model: Path | str, data: Path, report: Path, *extra: str) -> list[str]:
    return ["evaluate", "-m", str(model), "--data", str(data), "-o", str(report), "--device", "cpu", *extra]


@case("evaluate: report exists without --force")
def _report_exists(d: Path, m: Models) -> Refusal:
    report = d / "report.json"
    report.write_text("{}")
    return Refusal(evaluate(m.segmentation, cases_folder(d), report, "--split", "all"), report, "--force")


@case("evaluate: dataset missing")
def _dataset_missing(d: Path, m: Models) -> Refusal:
    return Refusal(evaluate(m.segmentation, d / "nodata", d / "report.json"), d / "nodata", "not found")


@case("evaluate: --split val on a card that lists no validation cases")
def _no_val(d: Path, m: Models) -> Refusal:
    data = cases_folder(d)
    return Refusal(evaluate(m.segmentation, data, d / "report.json", "--split", "val"), data, "no validation")


@case("evaluate: --split test on segmentation data")
def _split_test(d: Path, m: Models) -> Refusal:
    return Refusal(evaluate(m.segmentation, cases_folder(d), d / "report.json", "--split", "test"), "--split test",
                   ".npz")


@case("evaluate: a label on another grid than its image")
def _eval_grid(d: Path, m: Models) -> Refusal:
    data = cases_folder(d, shift_label=True)
    return Refusal(evaluate(m.segmentation, data, d / "report.json", "--split", "all"),
                   data / "labels" / "case1.nii.gz", "grid differs")


@case("evaluate: image without a label")
def _eval_unpaired(d: Path, m: Models) -> Refusal:
    data = cases_folder(d)
    (data / "labels" / "case1.nii.gz").unlink()
    return Refusal(evaluate(m.segmentation, data, d / "report.json", "--split", "all"), data / "labels",
                   "has no label")


# --- cad train -----------------------------------------------------------------------------------------------------


def train(data: Path, output: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "-o", str(output), "--epochs", "1", "--patch-size", "8,8,8", "--filters",
            "4,8,16", "--device", "cpu", *extra]


@case("train: dataset.json that is not JSON")
def _train_json(d: Path, m: Models) -> Refusal:
    spec = d / "dataset.json"
    spec.write_text("{ nope")
    return Refusal(train(spec, d / "model"), spec, "cannot parse")


@case("train: dataset.json without a training list")
def _train_no_list(d: Path, m: Models) -> Refusal:
    spec = d / "dataset.json"
    spec.write_text(json.dumps({"name": "x", "labels": {"0": "background", "1": "a"}}))
    return Refusal(train(spec, d / "model"), spec, "'training'")


@case("train: dataset.json naming a missing file")
def _train_missing_file(d: Path, m: Models) -> Refusal:
    spec = d / "dataset.json"
    spec.write_text(json.dumps({"labels": {"0": "background", "1": "a"},
                                "training": [{"image": "gone.nii.gz", "label": "gone_label.nii.gz"}]}))
    return Refusal(train(spec, d / "model"), spec, "missing file")


@case("train: a case in both training and validation")
def _train_both(d: Path, m: Models) -> Refusal:
    data = cases_folder(d)
    entry = {"image": "images/case0.nii.gz", "label": "labels/case0.nii.gz"}
    spec = data / "dataset.json"
    spec.write_text(json.dumps({"labels": {"0": "background", "1": "a"}, "training": [entry], "validation": [entry]}))
    return Refusal(train(spec, d / "model"), spec, "both")


@case("train: --cascade for a classifier")
def _train_cascade_classify(d: Path, m: Models) -> Refusal:
    return Refusal(train(cases_folder(d), d / "model", "--task", "classify", "--cascade"), "--cascade", "segmentation")


@case("train: a cascade option without --cascade")
def _train_stray(d: Path, m: Models) -> Refusal:
    return Refusal(train(cases_folder(d), d / "model", "--coarse-epochs", "3"), "--coarse-epochs", "--cascade")


@case("train: a model package already in the output")
def _train_exists(d: Path, m: Models) -> Refusal:
    output = d / "model"
    shutil.copytree(m.segmentation, output)
    return Refusal(train(cases_folder(d), output), output, "--force")


@case("train: --init with an unknown model")
def _train_init(d: Path, m: Models) -> Refusal:
    return Refusal(train(cases_folder(d), d / "model", "--init", "no-such-parent"), "no-such-parent", "unknown model")


@case("train: a patch the network cannot halve")
def _train_patch(d: Path, m: Models) -> Refusal:
    argv = train(cases_folder(d), d / "model")
    argv[argv.index("--patch-size") + 1] = "9,8,8"
    return Refusal(argv, "9, 8, 8", "divisible")


# --- cad models ----------------------------------------------------------------------------------------------------


@case("models show: unknown id")
def _show_unknown(d: Path, m: Models) -> Refusal:
    return Refusal(["models", "show", "no-such-model"], "no-such-model", "unknown model")


@case("models verify: weights altered")
def _verify_altered(d: Path, m: Models) -> Refusal:
    refusal = _altered(d, m)
    return Refusal(["models", "verify", str(d / "altered")], refusal.names, "sha256 mismatch")


@case("models import: a folder that is no package")
def _import_nothing(d: Path, m: Models) -> Refusal:
    folder = d / "random-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    return Refusal(["models", "import", str(folder)], folder, "not a model package")


@case("models import: weights altered")
def _import_altered(d: Path, m: Models) -> Refusal:
    refusal = _altered(d, m)
    return Refusal(["models", "import", str(d / "altered")], refusal.names, "sha256 mismatch")


# --- header lies and geometry that cannot be trusted (read before allocating) ---------------------------------------


def nifti(d: Path, name: str = "scan.nii") -> Path:
    """An uncompressed single-file NIfTI-1 of the blob, so its header bytes can be edited in place."""
    return write(blob(), d / name)


def patch_bytes(path: Path, offset: int, fmt: str, value: float | int) -> Path:
    import struct

    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


def metaimage(d: Path, name: str, **fields: str) -> Path:
    """A MetaImage (.mha) header with chosen fields and 64 bytes of data: what a hand-made or broken file looks like."""
    header = {"ObjectType": "Image", "NDims": "3", "BinaryData": "True", "BinaryDataByteOrderMSB": "False",
              "DimSize": "4 4 4", "ElementSpacing": "1 1 1", "Offset": "0 0 0",
              "TransformMatrix": "1 0 0 0 1 0 0 0 1", "ElementType": "MET_UCHAR", **fields}
    text = "".join(f"{key} = {value}\n" for key, value in header.items()) + "ElementDataFile = LOCAL\n"
    path = d / name
    path.write_bytes(text.encode() + bytes(range(64)))
    return path


@case("segment: NIfTI vox_offset 0 (header bytes read as voxels)")
def _vox_offset(d: Path, m: Models) -> Refusal:
    source = patch_bytes(nifti(d), 108, "<f", 0.0)
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "vox_offset")


@case("segment: NIfTI with zero voxel spacing")
def _zero_spacing(d: Path, m: Models) -> Refusal:
    source = patch_bytes(nifti(d), 80, "<f", 0.0)
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "spacing")


@case("segment: NIfTI with NaN voxel spacing")
def _nan_spacing(d: Path, m: Models) -> Refusal:
    source = patch_bytes(nifti(d), 84, "<f", float("nan"))
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "spacing")


@case("segment: MetaImage with a NaN origin")
def _nan_origin(d: Path, m: Models) -> Refusal:
    source = metaimage(d, "nan_origin.mha", Offset="nan 0 0")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "origin")


@case("segment: MetaImage whose direction is not orthonormal")
def _skewed(d: Path, m: Models) -> Refusal:
    source = metaimage(d, "skewed.mha", TransformMatrix="1 0 0 0.5 1 0 0 0 1")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "orthonormal")


@case("segment: complex-valued voxels")
def _complex(d: Path, m: Models) -> Refusal:
    real = sitk.GetArrayFromImage(blob())
    source = write(sitk.RealAndImaginaryToComplex(sitk.GetImageFromArray(real), sitk.GetImageFromArray(real)),
                   d / "complex.mha")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "complex")


@case("segment: a 4 KiB file whose header claims 1024^3 float32 voxels")
def _huge_claim(d: Path, m: Models) -> Refusal:
    source = metaimage(d, "huge.mha", DimSize="1024 1024 1024", ElementType="MET_FLOAT")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "bytes")


@case("segment: uncompressed .nii cut short")
def _short_nii(d: Path, m: Models) -> Refusal:
    source = nifti(d)
    source.write_bytes(source.read_bytes()[:600])
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "bytes")


@case("segment: .mhd whose data file is missing")
def _mhd_no_data(d: Path, m: Models) -> Refusal:
    source = write(blob(), d / "split.mhd")
    for data in d.glob("split.*raw*"):
        data.unlink()
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "")


# --- hostile model packages ----------------------------------------------------------------------------------------


@case("models import: an absolute id")
def _absolute_id(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card.update(id=str(d / "victim")))
    return Refusal(["models", "import", str(copy)], copy / "model.json", "'id'")


@case("models import: an id that climbs out of the registry")
def _climbing_id(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card.update(id="../escaped"))
    return Refusal(["models", "import", str(copy)], copy / "model.json", "'id'")


@case("models import: a package holding a symlink")
def _symlink(d: Path, m: Models) -> Refusal:
    copy = d / "linked"
    shutil.copytree(m.segmentation, copy)
    secret = d / "secret.txt"
    secret.write_text("not for the registry")
    (copy / "notes.md").symlink_to(secret)
    return Refusal(["models", "import", str(copy)], copy / "notes.md", "link")


@case("models import: a shipped model's id without --force")
def _shadowing(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card.update(id="hippocampus-unet"))
    return Refusal(["models", "import", str(copy)], "hippocampus-unet", "shipped")


@case("segment: pickled weights whose sha256 the card matches")
def _pickle(d: Path, m: Models) -> Refusal:
    import hashlib

    import torch

    copy = d / "pickled"
    shutil.copytree(m.segmentation, copy)
    weights = copy / "model.safetensors"
    torch.save({"x": torch.zeros(2)}, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = json.loads((copy / "model.json").read_text())
    card["weights"]["sha256"] = digest
    (copy / "model.json").write_text(json.dumps(card))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), weights, "safetensors")


@case("segment: weights that do not fit the card's network")
def _misfit(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card["network"]["params"].update(filters=[8, 16, 32]))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.safetensors", "")


@case("segment: a card claiming a 20000-channel layer")
def _huge_network(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card["network"]["params"].update(filters=[20000, 8, 16]))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.safetensors", "")


# --- training and classification defaults ----------------------------------------------------------------------------


@case("train: an output folder whose name is no model id")
def _train_bad_id(d: Path, m: Models) -> Refusal:
    return Refusal(train(cases_folder(d), d / "my model"), d / "my model", "--id")


@case("classify: a mask with no lesion")
def _empty_mask(d: Path, m: Models) -> Refusal:
    mask = write(sitk.GetImageFromArray(np.zeros((12, 14, 16), np.uint8)), d / "empty_mask.nii.gz")
    return Refusal(classify(good(d), m.classification, d / "r.json", "--mask", str(mask)), mask, "")


@case("train: a dataset of one case (nothing to validate on)")
def _train_one_case(d: Path, m: Models) -> Refusal:
    data = cases_folder(d, n=1)
    return Refusal(train(data, d / "model"), data, "two labelled cases")
