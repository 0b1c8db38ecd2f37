"""``cad train`` refuses broken datasets and impossible settings in one line, before anything is written.

Each case runs through the real CLI on real files (SimpleITK volumes, numpy archives, CSVs written here, and the
three hippocampus cases shipped in ``sample_data``): exit 2, exactly one line on stderr (captured at the file
descriptor, so native-library warnings would count) naming the file or the flag, no traceback, and no output
folder afterwards. Dataset checks must also run before the first case is preprocessed: the trainer's
``prepare_cases`` is replaced by a tripwire in those tests.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.cli import main

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_data" / "hippocampus"
SIZE = (12, 10, 8)  # I, J, K
# tiny settings before each bad one (a later flag wins): should a check regress, the run is short, not 100 epochs
TINY = ["--epochs", "1", "--filters", "4,8,16", "--patch-size", "16,16,16", "--spacing", "2,2,2", "--batch-size", "2"]


def volume(array: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def write_pair(root: Path, name: str, index: int, label_spacing=(1.0, 1.0, 2.0), label_size=SIZE) -> None:
    """A noisy block with a labelled cube; the label may be put on another grid on purpose."""
    rng = np.random.default_rng(index)
    image = rng.normal(50, 10, SIZE).astype(np.float32)
    image[3:8, 3:7, 2:6] += 100
    label = np.zeros(label_size, np.uint8)
    label[3:8, 3:7, 2:6] = 1
    (root / "images").mkdir(exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    sitk.WriteImage(volume(image), str(root / "images" / f"{name}.nii.gz"))
    sitk.WriteImage(volume(label, label_spacing), str(root / "labels" / f"{name}.nii.gz"))


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three good cases in images/ + labels/ and a valid dataset.json naming them."""
    root = tmp_path / "data"
    root.mkdir()
    for index in range(3):
        write_pair(root, f"case_{index}", index)
    write_spec(root, {})
    return root


def entry(name: str) -> dict[str, str]:
    return {"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"}


def write_spec(root: Path, changes: dict) -> Path:
    spec = {"name": "cubes", "labels": {"0": "background", "1": "cube"}, "modality": {"0": "MRI"},
            "training": [entry(f"case_{i}") for i in range(3)], **changes}
    path = root / "dataset.json"
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def tripwire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any case reaches preprocessing: every dataset check must come before it."""
    import cadcore.training.segmentation as segmentation

    def never(*args, **kwargs):
        raise AssertionError("a case was preprocessed before the dataset was refused")

    monkeypatch.setattr(segmentation, "prepare_cases", never)


def refused(argv: list[str], output: Path, capfd: pytest.CaptureFixture[str], *named: str) -> str:
    """Run ``cad`` and check the contract; returns the one stderr line."""
    code = main(argv)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("cad train: error: "), err
    for text in named:
        assert text in lines[0], err
    assert not output.exists()
    return lines[0]


def train(data: Path | str, output: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "-o", str(output), "--device", "cpu", *extra]


# --- impossible settings: refused while the config is built, before the data is even opened --------------------

@pytest.mark.parametrize("extra, flag", [
    (["--epochs", "-3"], "--epochs"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "-2"], "--batch-size"),
    (["--batch-size", "0"], "--batch-size"),
    (["--patch-size", "0,0,0"], "--patch-size"),
    (["--patch-size", "16,16"], "--patch-size"),
    (["--patch-size", "16,16,16,16"], "--patch-size"),
    (["--val-fraction", "0"], "--val-fraction"),
    (["--val-fraction", "1.5"], "--val-fraction"),
    (["--val-every", "0"], "--val-every"),
    (["--lr", "-0.001"], "--lr"),
    (["--lr", "nan"], "--lr"),
    (["--filters", "4,8"], "--filters"),
    (["--filters", "4,0,16"], "--filters"),
    (["--mirror-axes", "0,3"], "--mirror-axes"),
    (["--modality", "PET"], "--modality"),
    (["--spacing", "0,1,1"], "--spacing"),
    (["--cascade", "--coarse-epochs", "0"], "--coarse-epochs"),
    (["--cascade", "--coarse-patch-size", "8,-8,8"], "--coarse-patch-size"),
    (["--task", "classify", "--patience", "0"], "--patience"),
    (["--task", "classify", "--roi-size", "0,28,28"], "--roi-size"),
    (["--task", "classify", "--widths", "4,8,-16,32"], "--widths"),
    (["--task", "classify", "--epochs", "-1"], "--epochs"),
])
def test_impossible_settings_are_refused_naming_the_flag(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                         extra: list[str], flag: str) -> None:
    output = tmp_path / "never"
    tiny = TINY if "classify" not in extra else ["--epochs", "1", "--widths", "4,8,16,32"]
    refused(train(SAMPLES, output, *tiny, *extra), output, capfd, flag)


def test_a_patch_below_the_networks_minimum_is_refused_before_loading(tmp_path: Path, tripwire,
                                                                      capfd: pytest.CaptureFixture[str]) -> None:
    """Four levels halve three times: a 4-voxel patch edge cannot be divided by 8."""
    output = tmp_path / "never"
    refused(train(SAMPLES, output, "--patch-size", "4,4,4", "--filters", "4,8,16,32", "--spacing", "2,2,2"),
            output, capfd, "patch size [4, 4, 4]", "divisible by [8, 8, 8]")


def test_settings_are_refused_before_an_existing_output_is_touched(tmp_path: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "package"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    assert main(train(SAMPLES, output, "--epochs", "-3", "--force")) == 2
    assert "--epochs" in capfd.readouterr().err
    assert [p.name for p in output.iterdir()] == ["keep.txt"]


# --- dataset.json: types, label keys, files, ids ---------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"labels": {"background": 0, "cube": 1}}, "'labels' key 'background'"),
    ({"labels": {"0": "background", "1": 5}}, "'labels' entry '1'"),
    ({"labels": [["0", "background"], ["1", "cube"]]}, "'labels' must be an object"),
    ({"labels": {"0": "background", "300": "cube"}}, "'labels' key '300'"),
    ({"modality": "MRI"}, "'modality' must be an object"),
    ({"name": 7}, "'name' must be a string"),
    ({"training": [entry("case_0"), {"image": 123, "label": "labels/case_1.nii.gz"}]}, "entry 1 needs 'image'"),
    ({"training": [entry("case_0"), {"image": "images/case_1.nii.gz"}]}, "entry 1 needs 'label'"),
    ({"training": [entry("case_0"), "images/case_1.nii.gz"]}, "entry 1 must be an object"),
    ({"training": [entry("case_0"), entry("case_9")]}, "missing file"),
    ({"training": [entry("case_0"), entry("case_1"), entry("case_0")]}, "listed twice"),
    ({"training": [entry("case_0"), {**entry("case_1"), "pseudo": "yes"}]}, "'pseudo' must be true or false"),
    ({"training": {"case_0": entry("case_0")}}, "no 'training' list"),
    ({"training": [entry("case_0")], "validation": [entry("case_1"), entry("case_0")]}, "both 'training' and"),
])
def test_a_bad_dataset_json_is_refused_naming_it(dataset: Path, tmp_path: Path, tripwire,
                                                  capfd: pytest.CaptureFixture[str], changes: dict,
                                                  message: str) -> None:
    spec = write_spec(dataset, changes)
    output = tmp_path / "never"
    refused(train(dataset, output), output, capfd, str(spec), message)


def test_a_dataset_json_that_is_not_an_object_is_refused(dataset: Path, tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    (dataset / "dataset.json").write_text(json.dumps([entry("case_0")]))
    output = tmp_path / "never"
    refused(train(dataset / "dataset.json", output), output, capfd, "dataset.json", "JSON object")


def test_a_label_on_another_grid_is_refused_before_the_first_case(dataset: Path, tmp_path: Path, tripwire,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """The last case's label has 2.5 mm slices: found from the headers, not after two cases were preprocessed."""
    write_pair(dataset, "case_2", 2, label_spacing=(1.0, 1.0, 2.5))
    output = tmp_path / "never"
    refused(train(dataset, output), output, capfd, str(dataset / "labels" / "case_2.nii.gz"), "spacing",
            "case_2.nii.gz")


def test_a_real_label_with_another_size_is_refused(tmp_path: Path, tripwire,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    """The shipped hippocampus cases, the third label swapped for the first's (another volume size)."""
    root = tmp_path / "hippo"
    for folder in ("imagesTr", "labelsTr"):
        (root / folder).mkdir(parents=True)
        for path in (SAMPLES / folder).iterdir():
            (root / folder / path.name).write_bytes(path.read_bytes())
    (root / "labelsTr" / "hippocampus_046.nii.gz").write_bytes((SAMPLES / "labelsTr" /
                                                                 "hippocampus_015.nii.gz").read_bytes())
    output = tmp_path / "never"
    refused(train(root, output), output, capfd, "hippocampus_046.nii.gz", "size")


# --- image/label folders ---------------------------------------------------------------------------------------

def test_a_label_without_an_image_is_refused(dataset: Path, tmp_path: Path, tripwire,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    (dataset / "dataset.json").unlink()
    (dataset / "images" / "case_1.nii.gz").unlink()
    output = tmp_path / "never"
    refused(train(dataset, output), output, capfd, str(dataset / "images"), "label case_1.nii.gz has no image")


def test_an_unreadable_image_in_a_folder_is_refused_naming_it(dataset: Path, tmp_path: Path, tripwire,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    (dataset / "dataset.json").unlink()
    broken = dataset / "images" / "case_2.nii.gz"
    broken.write_bytes(b"not an image at all" * 10)
    output = tmp_path / "never"
    refused(train(dataset, output), output, capfd, str(broken), "cannot read image header")


def test_two_images_with_one_case_id_are_refused(dataset: Path, tmp_path: Path, tripwire,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    (dataset / "dataset.json").unlink()
    sitk.WriteImage(sitk.ReadImage(str(dataset / "images" / "case_0.nii.gz")), str(dataset / "images" / "case_0.nrrd"))
    output = tmp_path / "never"
    refused(train(dataset, output), output, capfd, str(dataset / "images"), "case id 'case_0'")


# --- classification data: .npz archives -----------------------------------------------------------------------

def good_arrays(n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    images = (rng.random((n, 8, 8, 8)) * 255).astype(np.uint8)
    labels = (np.arange(n) % 2).astype(np.uint8)[:, None]
    return {"train_images": images, "train_labels": labels, "val_images": images[:4], "val_labels": labels[:4]}


def truncated(path: Path) -> None:
    np.savez_compressed(path, **good_arrays(40))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def lying_member(path: Path) -> None:
    """A valid zip whose train_images member claims (1000, 64, 64, 64) but holds a few bytes."""
    arrays = good_arrays()
    np.savez(path, **arrays)
    header = b"\x93NUMPY\x01\x00"
    text = "{'descr': '|u1', 'fortran_order': False, 'shape': (1000, 64, 64, 64), }"
    text += " " * (118 - len(text)) + "\n"
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            if key == "train_images":
                archive.writestr(f"{key}.npy", header + len(text).to_bytes(2, "little") + text.encode() + b"\0" * 64)
            else:
                with archive.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, value)


def saved(**changes) -> callable:
    def write(path: Path) -> None:
        arrays = {**good_arrays(), **changes}
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return write


def object_array(path: Path) -> None:
    arrays = good_arrays()
    arrays["train_labels"] = np.array([{"label": 1}] * 6, dtype=object)
    np.savez(path, **arrays)


@pytest.mark.parametrize("make, message", [
    (truncated, ".npz"),
    (lying_member, "train_images is truncated"),
    (object_array, "object array"),
    (saved(train_labels=None), "train_labels"),
    (saved(train_labels=np.full((6, 1), 0.5)), "integer class indices"),
    (saved(train_labels=np.array([[0], [1], [-1], [0], [1], [0]])), ">= 0"),
    (saved(train_labels=np.zeros((5, 1), np.uint8)), "5 labels for 6 images"),
    (saved(train_images=np.zeros((6, 8, 8), np.uint8)), "(N, D, H, W)"),
    (saved(train_images=np.full((6, 8, 8, 8), "x")), "must hold numbers"),
    (lambda path: path.write_text("image,label\n"), "not a zip archive"),
])
def test_a_bad_npz_is_refused_in_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str], make,
                                          message: str) -> None:
    path = tmp_path / "set.npz"
    make(path)
    output = tmp_path / "never"
    refused(train(path, output, "--task", "classify", "--epochs", "1"), output, capfd, str(path), message)


# --- classification data: CSV ----------------------------------------------------------------------------------

@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    """Two lesion volumes with masks on their grid, and one mask on another grid."""
    root = tmp_path / "lesions"
    root.mkdir()
    rng = np.random.default_rng(3)
    for index in range(2):
        image = rng.normal(50, 10, SIZE).astype(np.float32)
        mask = np.zeros(SIZE, np.uint8)
        mask[4:8, 3:7, 2:6] = 1
        sitk.WriteImage(volume(image), str(root / f"lesion_{index}.nii.gz"))
        sitk.WriteImage(volume(mask), str(root / f"mask_{index}.nii.gz"))
    sitk.WriteImage(volume(np.ones(SIZE, np.uint8), origin=(5.0, 0.0, 0.0)), str(root / "shifted_mask.nii.gz"))
    return root


@pytest.mark.parametrize("text, message", [
    ("image,mask\nlesion_0.nii.gz,mask_0.nii.gz\n", "missing: label"),
    ("image,label,mask\nlesion_0.nii.gz,0,mask_0.nii.gz\nlesion_1.nii.gz,benign,mask_1.nii.gz\n",
     "line 3: label must be an integer"),
    ("image,label,mask\nlesion_0.nii.gz,0,mask_0.nii.gz\nlesion_7.nii.gz,1,mask_1.nii.gz\n",
     "line 3: image file not found"),
    ("image,label,mask\nlesion_0.nii.gz,0,mask_0.nii.gz\nlesion_1.nii.gz,1,shifted_mask.nii.gz\n",
     "line 3: mask shifted_mask.nii.gz is not on the grid of lesion_1.nii.gz (origin"),
    ("image,label,mask,mask_value\nlesion_0.nii.gz,0,mask_0.nii.gz,one\n", "line 2: mask_value must be an integer"),
    ("image,label\n", "no rows"),
])
def test_a_bad_csv_is_refused_naming_it_and_the_line(csv_root: Path, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str], text: str,
                                                     message: str) -> None:
    path = csv_root / "lesions.csv"
    path.write_text(text)
    output = tmp_path / "never"
    refused(train(path, output, "--task", "classify", "--epochs", "1"), output, capfd, str(path), message)


# --- unusual but valid: the stricter reading still accepts these ------------------------------------------------

def test_valid_unusual_datasets_still_load(dataset: Path, tmp_path: Path) -> None:
    """Absolute paths, a validation list, a pseudo flag, no modality; folders with nnU-Net's _0000 image suffix."""
    from cadcore.io.datasets import load_dataset

    spec = write_spec(dataset, {"modality": None, "labels": {"1": "cube"},
                                "training": [{"image": str(dataset / "images" / "case_0.nii.gz"),
                                              "label": str(dataset / "labels" / "case_0.nii.gz"), "pseudo": True},
                                             entry("case_1")],
                                "validation": [entry("case_2")]})
    loaded = load_dataset(spec)
    assert [c.id for c in loaded.cases] == ["case_0", "case_1"] and loaded.cases[0].pseudo
    assert [c.id for c in loaded.validation] == ["case_2"] and loaded.label_names == {1: "cube"}
    spec.unlink()
    for path in (dataset / "images").iterdir():
        path.rename(path.with_name(path.name.replace(".nii.gz", "_0000.nii.gz")))
    assert [c.id for c in load_dataset(dataset).cases] == ["case_0", "case_1", "case_2"]


def test_valid_compressed_npz_and_a_csv_with_a_bom_are_read(csv_root: Path, tmp_path: Path) -> None:
    from cadcore.classification.datasets import load_npz_split, read_csv_rows

    path = tmp_path / "set.npz"
    arrays = good_arrays()
    arrays["val_labels"] = arrays["val_labels"].astype(np.float64)  # whole-number floats are class indices too
    np.savez_compressed(path, **arrays)
    data = load_npz_split(path, "val")
    assert data.inputs.shape == (4, 1, 8, 8, 8) and data.labels.tolist() == [0, 1, 0, 1]
    table = csv_root / "lesions.csv"
    table.write_text("\ufeffimage,label,mask\nlesion_0.nii.gz,0,mask_0.nii.gz\nlesion_1.nii.gz,1,mask_1.nii.gz\n",
                     encoding="utf-8")
    rows = read_csv_rows(table)
    assert [(r.line, r.label, r.mask.name) for r in rows] == [(2, 0, "mask_0.nii.gz"), (3, 1, "mask_1.nii.gz")]
