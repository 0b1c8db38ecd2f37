"""The generic promptable model's data path (issue 15, item 5): ``benchmarks/prompt3d_data.py`` on tiny synthetic
sources (global label values, leave-structure-out, evaluation patients never trained on, sampling weights, tiles),
per-case sampling weights read from dataset.json and honoured by the training sampler (also sharded as under DDP),
and ``--modality any``: a card that takes CT and MR, trained and then run on both."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.cli import main
from cadcore.errors import CadError
from cadcore.io.datasets import load_dataset
from conftest import SHARED_DATA, make_tiny_segmentation_package, require_shared

REPO = Path(__file__).resolve().parents[3]


def assembler():
    spec = importlib.util.spec_from_file_location("prompt3d_data", REPO / "benchmarks" / "prompt3d_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["prompt3d_data"] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def write(array: np.ndarray, path: Path, spacing, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """(I, J, K) array -> a NIfTI file."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(d) for d in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def synthetic_sources(p3d, root: Path):
    """alpha: 6 MR patients, "larynx" (1) and "body" (2), LPS-stored; beta: 1 model-made whole-body CT, "body" (1)
    and "liver" (5), larger than a tile; gamma: 2 patients with only a "tumour"."""
    rng = np.random.default_rng(0)
    sources = [p3d.Source("alpha", "Alpha", "MR", False, {1: "larynx", 2: "body"}),
               p3d.Source("beta", "Beta", "CT", True, {1: "body", 5: "liver"}, tile=True),
               p3d.Source("gamma", "Gamma", "MR", False, {1: "tumour"})]
    cases = []
    for n in range(6):
        label = np.zeros((20, 18, 16), np.uint8)
        label[4:10, 4:10, 4:10] = 1
        label[11:17, 6:14, 5:12] = 2
        image = (rng.normal(300, 30, label.shape) + 200 * label).astype(np.int16)
        flip = (-1, 0, 0, 0, -1, 0, 0, 0, 1)
        cases.append(p3d.SourceCase("alpha", f"a{n}", f"alpha_{n}", write(image, root / f"a/img{n}.nii.gz", (2, 2, 2),
                                                                        flip),
                                    write(label, root / f"a/lab{n}.nii.gz", (2, 2, 2), flip)))
    label = np.zeros((60, 20, 12), np.uint8)
    label[5:55, 3:17, 2:10] = 1
    label[30:45, 5:12, 3:8] = 5
    image = (rng.normal(0, 50, label.shape) - 1000 + 1040 * (label > 0)).astype(np.int16)
    cases.append(p3d.SourceCase("beta", "b0", "beta_0", write(image, root / "b/img.nii.gz", (3, 3, 3)),
                                write(label, root / "b/lab.nii.gz", (3, 3, 3))))
    for n in range(2):
        label = np.zeros((16, 16, 16), np.uint8)
        label[5:9, 5:9, 5:9] = 1
        cases.append(p3d.SourceCase("gamma", f"g{n}", f"gamma_{n}",
                                    write(rng.normal(100, 10, label.shape).astype(np.float32) + 50 * label,
                                          root / f"g/img{n}.nii.gz", (2, 2, 2)),
                                    write(label, root / f"g/lab{n}.nii.gz", (2, 2, 2))))
    return sources, cases


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One build of the synthetic sources (larynx and tumour left out, 2 evaluation patients, 1 for validation)."""
    p3d = assembler()
    root = tmp_path_factory.mktemp("p3d")
    sources, cases = synthetic_sources(p3d, root / "data")
    p3d.discover = lambda data, work: (sources, cases)
    settings = p3d.parse_args(["--data", str(root / "data"), "--work", str(root / "work"), "--spacing", "3",
                               "--max-size", "16", "--min-size", "8", "--val-size", "12", "--margin", "6",
                               "--eval-patients", "2", "--val-patients", "alpha=1,gamma=1"])
    split = p3d.build(settings)
    return p3d, root / "work", split


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_global_values_do_not_collide_and_left_out_structures_never_reach_training(built):
    _, work, split = built
    table = json.loads((work / "structures.json").read_text())
    assert {v: (e["source"], e["native_value"]) for v, e in table.items()} == {
        "1": ("alpha", 1), "2": ("alpha", 2), "3": ("beta", 1), "4": ("beta", 5), "5": ("gamma", 1)}
    assert [v for v, e in table.items() if e["left_out"]] == ["1", "5"] and table["3"]["model_made"] is True
    spec = json.loads((work / "dataset.json").read_text())
    assert sorted(spec["labels"]) == ["0", "2", "3", "4"]  # left-out values are not even named
    for section, allowed in (("training", {"alpha": {0, 2}, "beta": {0, 3, 4}}), ("validation", {"alpha": {0, 2}})):
        for entry in spec[section]:
            values = set(np.unique(read(work / entry["label"])).tolist())
            assert values <= allowed[entry["source"]] and len(values) > 1, (entry, values)
    assert split["cases"]["gamma"] == {"train": 0, "val": 0, "eval": 1, "dropped": 1, "train_entries": 0,
                                       "val_entries": 0, "patch_share": 0.0}  # nothing left to prompt
    dataset = load_dataset(work)  # what cad train reads
    assert len(dataset.cases) == len(spec["training"]) and len(dataset.validation) == 1


def test_evaluation_patients_are_never_trained_on_and_their_masks_are_binary_on_the_native_grid(built):
    _, work, split = built
    pairs = json.loads((work / "eval_pairs.json").read_text())
    spec = json.loads((work / "dataset.json").read_text())
    evaluated = {p["patient"] for p in pairs}
    assert sorted(p["structure"] for p in pairs) == ["larynx", "larynx", "tumour"] and len(evaluated) == 3
    assert not evaluated & {e["patient"] for e in spec["training"] + spec["validation"]}
    assert not {e["patient"] for e in spec["training"]} & {e["patient"] for e in spec["validation"]}
    for pair in pairs:
        image, mask = sitk.ReadImage(str(work / pair["image"])), sitk.ReadImage(str(work / pair["mask"]))
        assert mask.GetSize() == image.GetSize() and mask.GetDirection() == image.GetDirection()
        assert set(np.unique(read(work / pair["mask"])).tolist()) == {0, 1}
        assert read(work / pair["mask"]).sum() == (216 if pair["structure"] == "larynx" else 64)


def test_volumes_are_resampled_oriented_and_tiled_and_weights_give_each_source_its_share(built):
    _, work, split = built
    spec = json.loads((work / "dataset.json").read_text())
    beta = [e for e in spec["training"] if e["source"] == "beta"]
    assert len(beta) > 1  # 180 mm of body at 3 mm: tiles of at most 16 voxels
    for entry in spec["training"] + spec["validation"]:
        image = sitk.ReadImage(str(work / entry["image"]))
        assert image.GetSpacing() == pytest.approx((3.0, 3.0, 3.0))
        assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) == "RAS"
        assert max(image.GetSize()) <= 17
    assert sum(read(work / e["label"]).__eq__(4).sum() for e in beta) > 0  # the liver survives the tiling
    share = {s: sum(e["weight"] for e in spec["training"] if e["source"] == s) for s in ("alpha", "beta")}
    assert share["alpha"] == pytest.approx(2 * share["beta"], rel=1e-4)  # model-made: half a share
    assert np.mean([e["weight"] for e in spec["training"]]) == pytest.approx(1.0, rel=1e-4)
    assert {c.weight for c in load_dataset(work).cases} == {e["weight"] for e in spec["training"]}


def test_an_unknown_left_out_name_and_a_work_folder_in_the_shared_data_are_refused(tmp_path):
    p3d = assembler()
    structures = p3d.global_structures([p3d.Source("alpha", "Alpha", "MR", False, {1: "Larynx", 2: "spinal_cord"})])
    assert p3d.left_out_values(structures, ["spinal cord", "LARYNX"]) == {1, 2}
    with pytest.raises(SystemExit, match="no structure named 'pancreas'"):
        p3d.left_out_values(structures, ["pancreas"])
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(SystemExit, match="inside the shared data"):
        p3d.build(p3d.parse_args(["--data", str(data), "--work", str(data / "out")]))
    assert not (data / "out").exists()


@pytest.mark.parametrize("weight", [-1, "2", True, None, float("nan")])
def test_a_bad_weight_is_refused_naming_the_file(tmp_path, capfd, weight):
    root = tmp_path / "data"
    label = np.zeros((12, 10, 8), np.uint8)
    label[3:8, 3:7, 2:6] = 1
    entries = []
    for n in range(2):
        write(np.random.default_rng(n).normal(50, 10, label.shape).astype(np.float32), root / f"i{n}.nii.gz", (1,) * 3)
        write(label, root / f"l{n}.nii.gz", (1,) * 3)
        entries.append({"image": f"i{n}.nii.gz", "label": f"l{n}.nii.gz", "weight": 1.0})
    entries[1]["weight"] = weight
    spec = root / "dataset.json"
    spec.write_text(json.dumps({"labels": {"0": "background", "1": "cube"}, "training": entries}))
    with pytest.raises(CadError, match="'weight' must be a finite number >= 0"):
        load_dataset(spec)
    output = tmp_path / "never"
    assert main(["train", "--data", str(spec), "-o", str(output), "--device", "cpu"]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and str(spec) in err and "entry 1: 'weight'" in err, err
    assert not output.exists()
    entries[1]["weight"] = entries[0]["weight"] = 0
    spec.write_text(json.dumps({"labels": {"0": "background", "1": "cube"}, "training": entries}))
    with pytest.raises(CadError, match="all have weight 0"):
        load_dataset(spec)


def test_the_sampler_honours_weights_per_epoch_and_per_rank():
    import torch

    from cadcore.training.distributed import Ranks
    from cadcore.training.patches import PatchDataset, PreparedCase, WeightedShardSampler, case_sampler

    weights = [1.0, 1.0, 2.0, 0.0]
    counts = np.bincount(list(WeightedShardSampler(weights, seed=3, num_samples=20000)), minlength=4) / 20000
    assert counts == pytest.approx([0.25, 0.25, 0.5, 0.0], abs=0.015)
    first = WeightedShardSampler(weights, seed=3, num_samples=50)
    assert list(first) == list(WeightedShardSampler(weights, seed=3, num_samples=50))  # seeded
    before = list(first)
    first.set_epoch(1)
    assert list(first) != before  # a new draw each epoch
    ranks = [WeightedShardSampler(weights, rank=r, world=2, seed=3, num_samples=401) for r in (0, 1)]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == 201  # equal shards: DDP's all-reduce never waits
    joint = list(WeightedShardSampler(weights, seed=3, num_samples=402))
    assert shards[0] == joint[0::2] and shards[1] == joint[1::2]  # one draw, split by rank
    cases = [PreparedCase(str(n), np.zeros((1, 2, 2, 2), np.float32), np.zeros((1, 2, 2, 2), np.uint8), w)
             for n, w in enumerate(weights)]
    patches = PatchDataset(cases, transform=lambda data: data)
    assert case_sampler(PatchDataset(cases[:2], transform=None), Ranks(), 0) is None  # equal weights: as before
    sampler = case_sampler(patches, Ranks(), 0)
    assert isinstance(sampler, WeightedShardSampler) and len(sampler) == 4
    drawn = [int(i) for _ in range(200) for i in torch.utils.data.DataLoader(range(4), sampler=sampler)]
    assert 3 not in drawn  # weight 0: never drawn


def test_modality_any_is_accepted_and_a_ct_window_on_an_any_card_is_refused(tmp_path):
    from cadcore.registry.card_reader import parse_card
    from cadcore.training.config import TrainConfig

    assert TrainConfig("d", "o", modality="any").modality == "any"
    with pytest.raises(CadError, match="MR, CT or any"):
        TrainConfig("d", "o", modality="PET")
    package = make_tiny_segmentation_package(tmp_path / "anymod", modality="ANY")
    card = package.card.to_dict()
    assert parse_card(card).modality == "ANY"
    card["preprocessing"]["normalization"] = {"kind": "ct", "window": [-1000, 1000]}
    with pytest.raises(CadError, match="modality ANY means CT and MR"):
        parse_card(card, tmp_path / "model.json")


def test_a_guided_network_trained_with_modality_any_runs_on_a_ct_and_an_mr(built, tmp_path, capsys):
    """The synthetic build (MR alpha, CT beta): a 1-epoch guided training with --modality any, then cad interact on
    a CT (Hounsfield units) and an MR (arbitrary units): both give a binary mask on their own grid."""
    _, work, _ = built
    output = tmp_path / "guided-any"
    assert main(["train", "--data", str(work), "-o", str(output), "--interactive", "--modality", "any",
                 "--epochs", "1", "--patch-size", "16,16,16", "--filters", "4,8,16", "--spacing", "3,3,3",
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    card = json.loads((output / "model.json").read_text())
    assert card["modality"] == "ANY" and card["preprocessing"]["normalization"]["kind"] == "mr"
    rng = np.random.default_rng(1)
    for name, values in (("ct", rng.normal(-1000, 20, (24, 24, 24)) + 1040 * (rng.random((24, 24, 24)) > 0.5)),
                         ("mr", rng.normal(400, 60, (24, 24, 24)))):
        image = write(values.astype(np.int16), tmp_path / f"{name}.nii.gz", (1.2, 1.2, 2.0))
        mask = tmp_path / f"{name}_mask.nii.gz"
        assert main(["interact", str(image), "-m", str(output), "-o", str(mask), "--label", "1",
                     "--click=+-14,-14,24", "--device", "cpu"]) == 0, capsys.readouterr().err
        result = sitk.ReadImage(str(mask))
        assert result.GetSize() == (24, 24, 24) and set(np.unique(read(mask)).tolist()) <= {0, 1}


def test_the_shared_sources_give_177_structures_below_255():
    p3d = assembler()
    data = require_shared(SHARED_DATA / "openkbp_headneck_ct")
    sources, cases = p3d.discover(data.parent, Path("/nonexistent"))
    structures = p3d.global_structures(sources)
    assert [s.key for s in sources] == ["hippocampus", "tumour", "openkbp", "totalseg_ct", "totalseg_mr"]
    assert len(structures) == 177 and max(s.value for s in structures) < 255
    assert {structures[v - 1].source for v in p3d.left_out_values(structures, ["larynx", "tumour"])} == {
        "openkbp", "tumour"}
    assert sum(c.eval_only for c in cases) == 4  # the native PGBM-001/-003 scans
    assert not any(c.source == "tumour" and c.patient in ("PGBM-001", "PGBM-003") and not c.eval_only
                   for c in cases)


def test_cad_train_draws_no_patch_from_a_case_of_weight_zero(tmp_path, monkeypatch):
    """The weights reach the real training loop (not only the sampler): a weight-0 case is never drawn."""
    from cadcore.training import patches

    samples = Path(__file__).resolve().parents[3] / "sample_data" / "hippocampus"
    spec = json.loads((samples / "dataset.json").read_text())
    entries = [{k: str(samples / v) for k, v in entry.items()} for entry in spec["training"]]
    entries[0]["weight"], entries[1]["weight"] = 1.0, 0.0
    (tmp_path / "dataset.json").write_text(json.dumps({**spec, "training": entries[:2], "validation": entries[2:]}))
    drawn: list[str] = []
    original = patches.PatchDataset.__getitem__

    def recording(self, index):
        drawn.append(self.cases[index].id)
        return original(self, index)

    monkeypatch.setattr(patches.PatchDataset, "__getitem__", recording)
    assert main(["train", "--data", str(tmp_path / "dataset.json"), "-o", str(tmp_path / "model"), "--epochs", "3",
                 "--val-every", "3", "--patch-size", "16,16,16", "--filters", "4,8,16", "--device", "cpu"]) == 0
    assert drawn and not any("040" in name for name in drawn), drawn
    assert any("015" in name for name in drawn)
