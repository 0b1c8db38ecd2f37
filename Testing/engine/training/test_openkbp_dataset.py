"""``tools/openkbp_dataset.py``: an OpenKBP-like folder (real SimpleITK files written here) becomes a partly
labelled, by-patient split that ``cad train`` reads; bad input is refused in one line with nothing written; and the
real shared folder converts (skipped when ``../shared`` is absent)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.io.datasets import load_dataset
from conftest import SHARED_DATA, require_shared

REPO = Path(__file__).resolve().parents[3]
ORGANS = ["brainstem", "spinalcord", "rightparotid", "leftparotid", "esophagus", "larynx", "mandible"]
NAMES = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"]


def tool():
    """tools/openkbp_dataset.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("openkbp_dataset", REPO / "tools" / "openkbp_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# (case id, present organ columns): pt_7 has two cases (challenge train and validation), one patient
CASES = [("train_pt_1", [1, 2, 3, 4, 7]), ("train_pt_2", [1, 2, 3, 4, 5, 6, 7]), ("train_pt_3", [2, 3, 4]),
         ("train_pt_4", [1, 2, 5]), ("train_pt_5", [1, 2, 3, 4, 6]), ("train_pt_7", [1, 2]),
         ("validation_pt_7", [1, 2, 3]), ("validation_pt_8", [1, 2, 3, 4, 5, 6, 7])]


def write_source(root: Path, cases=CASES) -> Path:
    """An OpenKBP-like folder: imagesTr/, labelsTr/ (one small cube per present organ), dataset.json, cases.csv."""
    for kind in ("imagesTr", "labelsTr"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    rows = []
    for number, (cid, present) in enumerate(cases):
        label = np.zeros((8, 8, 8), np.uint8)
        for value in present:
            label.flat[value * 20:value * 20 + 6] = value
        ct = np.random.default_rng(number).normal(0, 50, (8, 8, 8)).astype(np.int16)
        for kind, array in (("imagesTr", ct), ("labelsTr", label)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((3.9, 3.9, 2.5))
            sitk.WriteImage(image, str(root / kind / f"{cid}.nii.gz"))
        rows.append([cid, cid.split("_")[0], "8x8x8", "3.9x3.9x2.5", *[int(v in present) for v in range(1, 8)]])
    with open(root / "cases.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["case", "openkbp_split", "size_xyz", "spacing_mm", *ORGANS], *rows])
    labels = {"0": "background", **{str(i + 1): name for i, name in enumerate(NAMES)}}
    (root / "dataset.json").write_text(json.dumps({"name": "OpenKBP-like", "labels": labels, "training": []}))
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_source(tmp_path / "openkbp")


def run(capsys, *args: str) -> tuple[int, str]:
    code = tool().main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def test_converts_to_a_partly_labelled_split_by_patient(source: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "converted"
    assert run(capsys, source, out, "--seed", "3")[0] == 0
    dataset = load_dataset(out / "dataset.json")  # the engine reads it, labels_present included
    test = load_dataset(out / "test.json")
    split = json.loads((out / "split.json").read_text())
    groups = {part: set(ids) for part, ids in split["patients"].items()}
    assert set().union(*groups.values()) == {"pt_1", "pt_2", "pt_3", "pt_4", "pt_5", "pt_7", "pt_8"}
    assert sum(len(g) for g in groups.values()) == 7 and all(groups.values())  # disjoint, none empty
    cases = {c.id: c for c in dataset.cases + dataset.validation + test.cases}
    assert len(cases) == len(CASES)
    expected = dict(CASES)
    assert all(cases[cid].labels_present == tuple(expected[cid]) for cid in expected)
    where = {c.id: part for part, group in (("training", dataset.cases), ("validation", dataset.validation),
                                            ("test", test.cases)) for c in group}
    assert where["train_pt_7"] == where["validation_pt_7"]  # one patient, one side of the split
    for cid, part in where.items():
        assert cid.split("_", 1)[1] in groups[part]
    assert dataset.label_names[3] == "right parotid gland" and dataset.modality == "CT"
    again = tmp_path / "again"
    assert run(capsys, source, again, "--seed", "3")[0] == 0
    assert json.loads((again / "split.json").read_text()) == split  # fixed by the seed


def test_labels_file_carries_snomed_codes(source: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "converted"
    assert run(capsys, source, out)[0] == 0
    labels = {entry["value"]: entry for entry in json.loads((out / "labels.json").read_text())}
    codes = {v: (e["terminology"]["type"]["code"], e["terminology"].get("type_modifier", {}).get("code"))
             for v, e in labels.items()}
    assert codes == {1: ("15926001", None), 2: ("2748008", None), 3: ("45289007", "24028007"),
                     4: ("45289007", "7771000"), 5: ("32849002", None), 6: ("4596009", None), 7: ("91609006", None)}
    assert all(e["terminology"]["category"]["code"] == "123037004" for e in labels.values())


def refused(capsys, source: Path, out: Path, *named: str, extra: tuple[str, ...] = ()) -> None:
    code, err = run(capsys, source, out, *extra)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("openkbp_dataset: error: "), err
    for text in named:
        assert text in lines[0], err
    assert not (out / "dataset.json").exists()


def test_an_absent_organ_that_is_drawn_is_refused(source: Path, tmp_path: Path, capsys) -> None:
    rows = list(csv.reader(open(source / "cases.csv")))
    rows[2][4 + 6] = "0"  # train_pt_2's mandible marked absent, but it is drawn
    with open(source / "cases.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    refused(capsys, source, tmp_path / "out", "train_pt_2.nii.gz", "holds organs [7]")


def test_bad_tables_and_folders_are_refused(source: Path, tmp_path: Path, capsys) -> None:
    text = (source / "cases.csv").read_text()
    (source / "cases.csv").write_text(text.replace("train_pt_3,train,8x8x8,3.9x3.9x2.5,0,", "train_pt_3,train,8x8x8,"
                                                                                        "3.9x3.9x2.5,2,"))
    refused(capsys, source, tmp_path / "out", "cases.csv", "line 4 (train_pt_3)", "0 or 1")
    (source / "cases.csv").write_text(text)
    (source / "imagesTr" / "train_pt_4.nii.gz").unlink()
    refused(capsys, source, tmp_path / "out", "train_pt_4.nii.gz", "missing file")
    refused(capsys, tmp_path / "nowhere", tmp_path / "out", "not an OpenKBP folder")
    refused(capsys, source, source / "converted", "not inside the (read-only) shared data")


def test_relabelled_source_is_refused(tmp_path: Path, capsys) -> None:
    source = write_source(tmp_path / "openkbp")
    spec = json.loads((source / "dataset.json").read_text())
    spec["labels"]["5"] = "Trachea"
    (source / "dataset.json").write_text(json.dumps(spec))
    refused(capsys, source, tmp_path / "out", "dataset.json", "not the seven OpenKBP organs")


def test_real_openkbp_folder_converts(tmp_path: Path, capsys) -> None:
    source = require_shared(SHARED_DATA / "openkbp_headneck_ct")
    out = tmp_path / "openkbp"
    assert run(capsys, source, out, "--limit", "6")[0] == 0
    dataset, test = load_dataset(out / "dataset.json"), load_dataset(out / "test.json")
    assert len(dataset.cases) + len(dataset.validation) + len(test.cases) == 6
    table = {row["case"]: row for row in csv.DictReader(open(source / "cases.csv"))}
    for case in dataset.cases + dataset.validation + test.cases:
        row = table[case.id]
        assert case.labels_present == tuple(v for v, organ in enumerate(ORGANS, 1) if row[organ] == "1")
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
        assert set(np.unique(label).tolist()) - {0} <= set(case.labels_present)
    assert dataset.label_names == {1: "brainstem", 2: "spinal cord", 3: "right parotid gland",
                                   4: "left parotid gland", 5: "esophagus", 6: "larynx", 7: "mandible"}
