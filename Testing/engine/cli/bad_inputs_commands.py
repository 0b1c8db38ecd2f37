"""Corpus entries (part 2): ``cad classify``, ``cad evaluate``, ``cad train`` and ``cad models`` refusals.

Registered into :data:`bad_inputs.CORPUS` on import (the corpus test imports every part).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bad_inputs import Models, Refusal, _altered, blob, case, good, write

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
