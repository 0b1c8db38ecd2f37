"""``cad train --init PARENT`` keeps what the parent knows: its label set (for an images/labels folder, which names
none), its label names, colours and terminology, a version derived from its own; and it refuses to validate on
cases the parent trained on unless ``--allow-overlap``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cadcore.cli import main
from cadcore.registry.packages import find_model
from cadcore.training.config import TrainConfig
from conftest import TINY_LABELS, make_tiny_segmentation_package

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_data" / "hippocampus"  # hippocampus_015, _040, _046; labels 1 and 2
CASES = ["hippocampus_015", "hippocampus_040", "hippocampus_046"]
TINY = ["--patch-size", "16,16,16", "--batch-size", "2", "--device", "cpu", "--val-every", "1", "--spacing", "2,2,2",
        "--epochs", "1"]
TERMINOLOGY = {"category": {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"},
               "type": {"scheme": "SCT", "code": "5366008", "meaning": "Hippocampus"}}
PARENT_LABELS = [{**label, "color": [0.1 * label["value"], 0.9, 0.5], "terminology": TERMINOLOGY}
                 for label in TINY_LABELS]  # anterior, posterior, in colours no default has
PARENT_DATA = "MSD Task04 Hippocampus (208 labelled cases)"


def parent(tmp_path: Path, **training):
    """The tiny parent, version 0.0.1, with terminology; ``training`` becomes its card's provenance."""
    return make_tiny_segmentation_package(tmp_path / "parent", seed=7, labels=PARENT_LABELS,
                                          **({"training": training} if training else {}))


def dataset(folder: Path, validation: list[str], names: dict[str, str] | None = None) -> Path:
    """A dataset.json of the sample cases with an explicit validation list (and label names, when given)."""
    def entry(case: str) -> dict[str, str]:
        return {"image": str(SAMPLES / "imagesTr" / f"{case}.nii.gz"),
                "label": str(SAMPLES / "labelsTr" / f"{case}.nii.gz")}

    folder.mkdir(parents=True, exist_ok=True)
    spec = {"name": "my corrections", "training": [entry(c) for c in CASES if c not in validation],
            "validation": [entry(c) for c in validation]}
    if names is not None:
        spec["labels"] = {"0": "background", **names}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder / "dataset.json"


def test_images_and_labels_folder_takes_the_parents_label_set_names_and_version(tmp_path, capsys):
    """A folder names no labels: the parent's two labels (values, names, colours, terminology) are the child's,
    where before the child knew only label 1 and refused the parent's second label in the label files."""
    tiny = parent(tmp_path)
    data = tmp_path / "folder"
    shutil.copytree(SAMPLES / "imagesTr", data / "images")
    shutil.copytree(SAMPLES / "labelsTr", data / "labels")
    output = tmp_path / "child"
    code = main(["train", "--data", str(data), "-o", str(output), "--init", str(tiny.folder), "--val-fraction",
                 "0.34", *TINY])
    assert code == 0, capsys.readouterr().err
    card = find_model(output).card.raw
    assert card["labels"] == PARENT_LABELS
    assert card["network"]["params"]["out_channels"] == 3
    assert json.loads((output / "init_report.json").read_text())["reinitialised"] == []
    assert card["version"] == "0.1.0"  # the parent's 0.0.1 with the minor part incremented


def test_dataset_names_keep_the_parents_metadata_where_they_name_the_same_structure(tmp_path, capsys):
    """``dataset.json`` names: "Anterior (hippocampus head)" names the parent's "anterior" (its words include the
    parent's), so the parent's entry is kept; "tumour" for label 2 is another structure: its own name, no
    terminology."""
    tiny = parent(tmp_path)
    data = dataset(tmp_path / "named", ["hippocampus_040"], {"1": "Anterior (hippocampus head)", "2": "tumour"})
    output = tmp_path / "child"
    code = main(["train", "--data", str(data), "-o", str(output), "--init", str(tiny.folder), *TINY])
    assert code == 0, capsys.readouterr().err
    labels = find_model(output).card.raw["labels"]
    assert labels[0] == PARENT_LABELS[0]
    assert labels[1]["value"] == 2 and labels[1]["name"] == "tumour" and "terminology" not in labels[1]
    assert labels[1]["color"] != PARENT_LABELS[1]["color"]


def test_validation_on_cases_the_parent_trained_on_is_refused_before_anything_is_written(tmp_path, capsys):
    """The parent held out hippocampus_040 of data sharing these ids: validating on hippocampus_015 would score
    what the parent memorised."""
    tiny = parent(tmp_path, data=PARENT_DATA, split={"val": ["hippocampus_040", "hippocampus_090"]})
    data = dataset(tmp_path / "leaky", ["hippocampus_015"])
    output = tmp_path / "child"
    code = main(["train", "--data", str(data), "-o", str(output), "--init", str(tiny.folder), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "hippocampus_015" in err and "--allow-overlap" in err and "dataset.json" in err
    assert not output.exists()


def test_validation_on_the_parents_held_out_cases_is_accepted(tmp_path, capsys):
    tiny = parent(tmp_path, data=PARENT_DATA, split={"val": ["hippocampus_040", "hippocampus_090"]})
    data = dataset(tmp_path / "clean", ["hippocampus_040"])
    output = tmp_path / "child"
    assert main(["train", "--data", str(data), "-o", str(output), "--init", str(tiny.folder), *TINY]) == 0, (
        capsys.readouterr().err)
    check = find_model(output).card.raw["training"]["parent_held_out"]
    assert check["checked"] is True and check["validation_cases_parent_trained_on"] == []


def test_allow_overlap_trains_and_the_card_records_the_overlap(tmp_path):
    """Library use (TrainConfig.allow_overlap); a version the caller gives
    is kept."""
    from cadcore.training.segmentation import train

    tiny = parent(tmp_path, data=PARENT_DATA, split={"val": ["hippocampus_040"]})
    data = dataset(tmp_path / "leaky", ["hippocampus_015"])
    config = TrainConfig(data=str(data), output=str(tmp_path / "child"), init=str(tiny.folder), epochs=1,
                         patch_size=[16, 16, 16], spacing=[2.0, 2.0, 2.0], device="cpu", val_every=1, version="3.0.0")
    config.allow_overlap = True
    card = train(config).card.raw
    assert card["training"]["parent_held_out"]["validation_cases_parent_trained_on"] == ["hippocampus_015"]
    assert card["training"]["parent_held_out"]["allowed"] is True
    assert card["version"] == "3.0.0"


def test_allow_overlap_flag_reaches_the_training(tmp_path, capsys):
    tiny = parent(tmp_path, data=PARENT_DATA, split={"val": ["hippocampus_040"]})
    data = dataset(tmp_path / "leaky", ["hippocampus_015"])
    output = tmp_path / "child"
    assert main(["train", "--data", str(data), "-o", str(output), "--init", str(tiny.folder), "--allow-overlap",
                 *TINY]) == 0, capsys.readouterr().err
    assert find_model(output).card.raw["training"]["parent_held_out"]["allowed"] is True


def test_the_parser_knows_allow_overlap():
    from cadcore.cli.parser import build_parser

    args = build_parser().parse_args(["train", "--data", "d", "-o", "o", "--allow-overlap"])
    assert args.allow_overlap is True
    assert build_parser().parse_args(["train", "--data", "d", "-o", "o"]).allow_overlap is None


def test_version_rule():
    from cadcore.training.transfer import child_version

    assert child_version("1.0.0") == "1.1.0" and child_version("0.0.1") == "0.1.0"
    assert child_version("2.3.7") == "2.4.0" and child_version("2") == "2.1" and child_version("1.9") == "1.10"
    assert child_version("nightly") is None  # not a version number: the caller keeps its own


def test_same_structure_rule():
    from cadcore.training.transfer import same_structure

    assert same_structure("Anterior hippocampus", "anterior (hippocampus head)")
    assert same_structure("Liver", "liver") and same_structure("left kidney", "Kidney, left")
    assert not same_structure("anterior", "tumour") and not same_structure("left kidney", "right kidney")
