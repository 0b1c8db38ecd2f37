"""MONAI Model Zoo bundles as models: ``cad segment -m BUNDLE_DIR`` and ``cad models import/list`` of a bundle.

The bundle is built here with the layout and config of the Model Zoo's ``spleen_ct_segmentation`` (same network,
transforms, inferer and postprocessing; random weights made in the test), so the real bundle's transforms run through
``monai.bundle`` without any download. Bad bundles must fail like every other bad input: exit 2, one line naming the
bundle, nothing written, and a ``model.pt`` that is not a state dict is refused without being unpickled.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cadcore.registry.bundles import label_color, read_bundle
from conftest import oblique_direction, run_cad

# The real bundle's sliding window (Project-MONAI/model-zoo models/spleen_ct_segmentation/configs/inference.json).
# A 96³ window on 2 CPU cores would make every test slow, so the tests use TEST_ROI_SIZE; nothing else differs.
SPLEEN_ROI_SIZE = [96, 96, 96]
TEST_ROI_SIZE = [32, 32, 32]
SPLEEN_NETWORK = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                  "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"}
SPLEEN_INFERENCE = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": SPLEEN_NETWORK,
    "network": "$@network_def.to(@device)",
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
         "clip": True},
        {"_target_": "EnsureTyped", "keys": "image"},
    ]},
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                   "num_workers": 4},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": SPLEEN_ROI_SIZE, "sw_batch_size": 4, "overlap": 0.5},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": ".nii.gz",
         "output_dtype": "$numpy.float32", "output_postfix": "trans", "separate_folder": True},
    ]},
    "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                  "val_handlers": "@handlers", "amp": True},
    "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                         "load_dict": {"model": "@network"}},
    "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
    "run": ["$@evaluator.run()"],
}
SPLEEN_METADATA = {
    "name": "Spleen CT segmentation", "version": "0.5.9", "monai_version": "1.3.0",
    "task": "Decathlon spleen segmentation",
    "description": "A pre-trained model for volumetric (3D) segmentation of the spleen from CT image",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                             "spatial_shape": SPLEEN_ROI_SIZE, "channel_def": {"0": "image"}}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "spatial_shape": SPLEEN_ROI_SIZE, "channel_def": {"0": "background", "1": "spleen"}}},
    },
}


def spleen_unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    params = {k: v for k, v in SPLEEN_NETWORK.items() if k != "_target_"}
    return UNet(**params)


class TripwireModule(torch.nn.Linear):
    """Records being unpickled: proof that a refused ``model.pt`` was never loaded as a pickle."""

    unpickled = False

    def __setstate__(self, state: dict) -> None:
        TripwireModule.unpickled = True
        super().__setstate__(state)


def make_bundle(folder: Path, config: dict | None = None, weights: str = "state_dict") -> Path:
    """A spleen_ct_segmentation-shaped bundle in ``folder`` (test-sized sliding window)."""
    config = copy.deepcopy(config or SPLEEN_INFERENCE)
    config["inferer"]["roi_size"] = TEST_ROI_SIZE
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(SPLEEN_METADATA, indent=2))
    model_pt = folder / "models" / "model.pt"
    if weights == "state_dict":
        torch.save(spleen_unet().state_dict(), model_pt)
    elif weights == "module":
        torch.save(TripwireModule(2, 2), model_pt)  # a whole pickled module
    elif weights == "torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(model_pt))
    return folder


@pytest.fixture
def spleen_bundle(tmp_path: Path) -> Path:
    return make_bundle(tmp_path / "spleen_ct_segmentation")


@pytest.fixture
def ct_volume(tmp_path: Path) -> tuple[sitk.Image, Path]:
    """CT-like int16 volume (HU: air, soft-tissue body, a brighter spleen-sized blob), oblique and anisotropic."""
    k, j, i = np.indices((14, 36, 40))
    array = np.full((14, 36, 40), -1000, np.int16)
    array[((i - 20) / 18) ** 2 + ((j - 18) / 16) ** 2 < 1] = 40
    array[((i - 26) / 6) ** 2 + ((j - 14) / 5) ** 2 + ((k - 7) / 4) ** 2 < 1] = 110
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.1, 3.0))
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection(oblique_direction(25.0))
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(image, str(path))
    return image, path


def assert_exact_grid(result: sitk.Image, reference: sitk.Image) -> None:
    assert result.GetSize() == reference.GetSize()
    assert np.allclose(result.GetSpacing(), reference.GetSpacing(), atol=1e-6)
    assert np.allclose(result.GetOrigin(), reference.GetOrigin(), atol=1e-6)
    assert np.allclose(result.GetDirection(), reference.GetDirection(), atol=1e-6)


def segment_with(capsys, bundle: str, source: Path, output: Path) -> tuple[int, str, str]:
    return run_cad(capsys, "segment", str(source), "-m", bundle, "-o", str(output), "--device", "cpu")


def resample_spy(monkeypatch: pytest.MonkeyPatch, allowed: bool) -> list[int]:
    """Record (or forbid) SimpleITK resampling, to tell which way the result reached the input grid."""
    calls: list[int] = []
    resample = sitk.Resample

    def spy(*args, **kwargs):
        if len(args) > 3 and args[3] == sitk.sitkNearestNeighbor:  # labels resampled (the working space's own
            calls.append(1)  # linear resampling, as Spacingd's, is not what this checks)
            assert allowed, "the bundle's Invertd should have restored the input grid without resampling"
        return resample(*args, **kwargs)

    monkeypatch.setattr(sitk, "Resample", spy)
    return calls


@pytest.mark.parametrize("suffix", [".nii.gz", ".seg.nrrd"])
def test_bundle_segments_onto_input_grid(tmp_path, capsys, monkeypatch, spleen_bundle, ct_volume, suffix):
    """The bundle's own transforms run, its Invertd restores the oblique input's exact grid (no resampling here)."""
    resample_spy(monkeypatch, allowed=False)
    image, source = ct_volume
    output = tmp_path / f"spleen{suffix}"
    code, out, err = segment_with(capsys, str(spleen_bundle), source, output)
    assert code == 0, err
    result = sitk.ReadImage(str(output))
    assert_exact_grid(result, image)
    assert set(np.unique(sitk.GetArrayViewFromImage(result))) <= {0, 1}
    sidecar = json.loads(Path(f"{output}.json").read_text())
    assert sidecar["model_name"] == "Spleen CT segmentation" and sidecar["model_version"] == "0.5.9"
    assert sidecar["model"] == spleen_bundle.name  # the registry id (folder name)
    assert [(label["value"], label["name"]) for label in sidecar["labels"]] == [(1, "spleen")]
    assert sidecar["labels"][0]["color"] == label_color(1)
    assert "spleen" in out
    assert not (spleen_bundle / "eval").exists()  # the bundle's SaveImaged never ran


def test_bundle_without_invertd_is_resampled_onto_input_grid(tmp_path, capsys, monkeypatch, ct_volume):
    """No inverse transforms in the postprocessing: the working-space labels are resampled onto the input grid."""
    calls = resample_spy(monkeypatch, allowed=True)
    config = copy.deepcopy(SPLEEN_INFERENCE)
    steps = config["postprocessing"]["transforms"]
    config["postprocessing"]["transforms"] = [s for s in steps if s["_target_"] not in ("Invertd", "SaveImaged")]
    bundle = make_bundle(tmp_path / "no_invert", config)
    image, source = ct_volume
    output = tmp_path / "seg.nii.gz"
    code, _, err = segment_with(capsys, str(bundle), source, output)
    assert code == 0, err
    result = sitk.ReadImage(str(output))
    assert_exact_grid(result, image)
    assert set(np.unique(sitk.GetArrayViewFromImage(result))) <= {0, 1}
    assert calls, "working-space labels must be resampled onto the input grid"


def test_labels_and_colours_from_metadata(spleen_bundle):
    bundle = read_bundle(spleen_bundle)
    assert bundle.labels == [{"value": 1, "name": "spleen", "color": label_color(1)}]
    assert label_color(1) == read_bundle(spleen_bundle).labels[0]["color"] and label_color(1) != label_color(2)


# --- bad bundles: exit 2, one line naming the bundle, nothing written, nothing unpickled ---------------------------


def broken_bundle(tmp_path: Path, kind: str) -> tuple[Path, Path, tuple[str, ...]]:
    """(bundle folder, the path the error must name, words it must contain)."""
    if kind == "no_config":
        folder = make_bundle(tmp_path / "no_config")
        (folder / "configs" / "inference.json").unlink()
        return folder, folder, ("configs/inference.json",)
    if kind == "not_installed":
        config = copy.deepcopy(SPLEEN_INFERENCE)
        config["network_def"]["_target_"] = "not_installed_pkg.Net"
        folder = make_bundle(tmp_path / "needs_pkg", config)
        return folder, folder, ("not_installed_pkg", "not installed", "Spleen CT segmentation")
    folder = make_bundle(tmp_path / kind, weights=kind)
    return folder, folder / "models" / "model.pt", ("state dict", "without unpickling")


@pytest.mark.parametrize("kind", ["no_config", "not_installed", "module", "torchscript"])
def test_bad_bundle_is_one_line_error(tmp_path, capsys, ct_volume, kind):
    _, source = ct_volume
    folder, named, words = broken_bundle(tmp_path, kind)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    TripwireModule.unpickled = False
    code, _, err = segment_with(capsys, str(folder), source, out_dir / "seg.nii.gz")
    assert code == 2, err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert f"{named}:" in err, err
    for word in words:
        assert word in err, (word, err)
    assert list(out_dir.iterdir()) == []
    assert not TripwireModule.unpickled


def test_bundle_refuses_probabilities_before_work(tmp_path, capsys, spleen_bundle, ct_volume):
    """A bundle's postprocessing returns labels, so ``--probabilities`` is refused up front, nothing written."""
    _, source = ct_volume
    code, _, err = run_cad(capsys, "segment", str(source), "-m", str(spleen_bundle), "-o", str(tmp_path / "s.nii.gz"),
                           "--probabilities", str(tmp_path / "p.nii.gz"))
    assert code == 2 and "--probabilities" in err and str(spleen_bundle) in err and err.count("\n") == 1
    assert not (tmp_path / "s.nii.gz").exists() and not (tmp_path / "p.nii.gz").exists()


def test_tripwire_detects_unpickling(tmp_path):
    """The check above means something: a full (unsafe) load of the same file does trip the wire."""
    folder = make_bundle(tmp_path / "module", weights="module")
    TripwireModule.unpickled = False
    torch.load(folder / "models" / "model.pt", weights_only=False)
    assert TripwireModule.unpickled


# --- registry ------------------------------------------------------------------------------------------------------


def test_import_list_and_segment_by_id(tmp_path, capsys, registry, spleen_bundle, ct_volume):
    """``cad models import`` copies the bundle into $CAD_MODELS; ``list`` shows it; its id works as ``-m``."""
    code, out, err = run_cad(capsys, "models", "import", str(spleen_bundle))
    assert code == 0, err
    assert (registry / "spleen_ct_segmentation" / "models" / "model.pt").is_file()
    code, out, err = run_cad(capsys, "models", "list")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("spleen_ct_segmentation")]
    assert len(lines) == 1, out
    assert lines[0].split()[:3] == ["spleen_ct_segmentation", "0.5.9", "segmentation"]
    assert "bundle" in lines[0] and str(registry / "spleen_ct_segmentation") in lines[0]
    code, _, err = run_cad(capsys, "models", "import", str(spleen_bundle))
    assert code == 2 and "--force" in err and err.count("\n") == 1
    image, source = ct_volume
    output = tmp_path / "by_id.nii.gz"
    code, _, err = segment_with(capsys, "spleen_ct_segmentation", source, output)
    assert code == 0, err
    assert_exact_grid(sitk.ReadImage(str(output)), image)
