"""Shared pytest fixtures: where ../shared/data is, synthetic volumes with awkward geometry."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CAD_SHARED_DATA", REPO.parent / "shared" / "data"))
HIPPOCAMPUS = SHARED_DATA / "msd_task04_hippocampus"


def require_shared(path: Path) -> Path:
    """Skip (with the reason) when the shared data set beside the checkout is absent."""
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (clone with ../shared beside the repository to run this test)")
    return path


@pytest.fixture
def shared_data() -> Path:
    return require_shared(SHARED_DATA)


@pytest.fixture
def hippocampus_dir() -> Path:
    return require_shared(HIPPOCAMPUS)


def oblique_direction(degrees: float = 20.0) -> tuple[float, ...]:
    """A rotation about an oblique axis, combined with an axis flip: an awkward but valid direction matrix."""
    angle = np.deg2rad(degrees)
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return tuple((rotation @ np.diag([-1.0, 1.0, 1.0])).ravel())


@pytest.fixture
def oblique_image():
    """A 3D float image with anisotropic spacing, an oblique direction and a non-zero origin."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    array = rng.normal(100, 20, size=(12, 20, 16)).astype(np.float32)  # (K, J, I)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 1.1, 2.5))
    image.SetOrigin((-12.5, 40.25, 7.0))
    image.SetDirection(oblique_direction())
    return image


TINY_LABELS = [
    {"value": 1, "name": "anterior", "color": [0.85, 0.35, 0.25]},
    {"value": 2, "name": "posterior", "color": [0.25, 0.6, 0.85]},
]


def make_tiny_segmentation_package(folder: Path, seed: int = 0, **card_overrides):
    """A real (untrained, random-weight) package: tiny DynUNet, hippocampus-like card. Builds in well under a second."""
    import torch

    from cadcore.registry.networks import build_network, dynunet_spec
    from cadcore.registry.packages import save_package

    torch.manual_seed(seed)
    spec = dynunet_spec(1, 3, [4, 8, 16], [1, 2, 2])
    card = {
        "format_version": 1,
        "id": folder.name,
        "version": "0.0.1",
        "task": "segmentation",
        "description": "tiny test model",
        "modality": "MR",
        "network": spec,
        "labels": TINY_LABELS,
        "preprocessing": {"orientation": "RAS", "spacing": [1.0, 1.0, 1.0],
                          "normalization": {"kind": "mr", "percentiles": [0.5, 99.5]}},
        "inference": {"patch_size": [16, 16, 16], "overlap": 0.25, "mode": "gaussian", "sw_batch_size": 2},
        "postprocessing": {"largest_component": True, "fill_holes": True},
    }
    card.update(card_overrides)
    return save_package(folder, card, build_network(spec).state_dict())


@pytest.fixture
def tiny_model(tmp_path: Path):
    return make_tiny_segmentation_package(tmp_path / "tiny-unet")


def make_tiny_classification_package(folder: Path, seed: int = 0, **card_overrides):
    """A real (untrained) ResNet-18-shaped classifier with 4–32 channels, fixed-spacing ROI of 16 voxels at 2 mm."""
    import torch

    from cadcore.registry.networks import build_network
    from cadcore.registry.packages import save_package

    torch.manual_seed(seed)
    spec = {"name": "ResNet", "params": {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 16, 32],
                                         "spatial_dims": 3, "n_input_channels": 1, "conv1_t_size": 3,
                                         "conv1_t_stride": 1, "num_classes": 2}}
    card = {
        "format_version": 1, "id": folder.name, "version": "0.0.1", "task": "classification",
        "network": spec,
        "classes": [{"value": 0, "name": "benign"}, {"value": 1, "name": "malignant"}],
        "roi": {"size": [16, 16, 16], "spacing": [2.0, 2.0, 2.0], "fit": "fixed", "input": "image",
                "orientation": "RAS"},
        "preprocessing": {"normalization": {"kind": "mr", "percentiles": [0.5, 99.5]}},
        "calibration": {"temperature": 1.5},
        "gradcam": {"target_layer": "layer4"},
    }
    card.update(card_overrides)
    return save_package(folder, card, build_network(spec).state_dict())


@pytest.fixture
def tiny_classifier(tmp_path: Path):
    return make_tiny_classification_package(tmp_path / "tiny-resnet")


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user model folder: tests never see (or touch) the real ~/.cadextension/models."""
    folder = tmp_path / "registry"
    folder.mkdir()
    monkeypatch.setenv("CAD_MODELS", str(folder))
    return folder


def edit_card(folder: Path, **changes: object) -> None:
    """Rewrite a package's card in place (what a careless user or a bad download does)."""
    import json

    card = json.loads((folder / "model.json").read_text())
    card.update(changes)
    (folder / "model.json").write_text(json.dumps(card))


def run_segment_fd(capfd, model, source: Path, tmp_path: Path, *extra: str) -> tuple[int, str, Path]:
    """``cad segment`` into a fresh folder; capfd sees descriptor 2, so native library output counts too."""
    from cadcore.cli import main

    out_dir = tmp_path / "result"
    out_dir.mkdir(exist_ok=True)
    capfd.readouterr()
    code = main(["segment", str(source), "-m", str(model.folder), "-o", str(out_dir / "seg.nii.gz"), *extra])
    return code, capfd.readouterr().err, out_dir


def run_cad(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``cad ARGS`` in process: (exit code, stdout, stderr)."""
    from cadcore.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
