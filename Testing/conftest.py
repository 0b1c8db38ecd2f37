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
