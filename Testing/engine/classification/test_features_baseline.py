"""Hand-crafted features (known answers on synthetic shapes) and the pickle-free classical baseline packages.

The baseline is the number a CNN must beat, so both halves must be right: the features against geometry and numpy,
the packages against tampering and against refits that would not reproduce the validated model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from cadcore.classification.baseline import (
    BaselineClassifier,
    baseline_card_section,
    roi_feature_spacing,
    train_baseline,
)
from cadcore.classification.radiomics import (
    DIRECTIONS,
    FEATURE_NAMES,
    FEATURES_VERSION,
    N_LEVELS,
    discretise,
    extract_features,
    feature_matrix,
    glcm_matrices,
)
from cadcore.errors import CadError
from cadcore.registry.locations import CARD_NAME
from cadcore.registry.packages import find_model, save_package
from conftest import SHARED_DATA, require_shared

CLASSES = [{"value": 0, "name": "normal"}, {"value": 1, "name": "adrenal mass"}]


def sphere(radius_mm: float, spacing: tuple[float, float, float]) -> np.ndarray:
    """A ball of the given radius (mm), centred in a grid with a margin of at least one voxel."""
    shape = [2 * int(np.ceil(radius_mm / s)) + 3 for s in spacing]
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    grid = np.meshgrid(*axes, indexing="ij")
    return sum(g**2 for g in grid) <= radius_mm**2


def box(size: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(tuple(n + 2 for n in size), dtype=bool)
    mask[1:-1, 1:-1, 1:-1] = True
    return mask


def shape_of(mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> dict[str, float]:
    return extract_features(mask.astype(np.float64), mask, spacing)


# ---- features ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 1.0, 2.0)])
def test_sphere_volume_and_sphericity(spacing):
    radius = 10.0
    features = shape_of(sphere(radius, spacing), spacing)
    assert features["shape_volume_mm3"] == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.03)
    # features version 2: marching-cubes area, 9-15 % high on a voxelised sphere (test_surface_area.py measures it)
    assert 1.0 < features["shape_surface_area_mm2"] / (4 * np.pi * radius**2) < 1.2
    assert 0.8 < features["shape_sphericity"] < 1.0
    assert features["shape_equivalent_diameter_mm"] == pytest.approx(2 * radius, rel=0.02)
    assert features["shape_elongation"] > 0.95 and features["shape_flatness"] > 0.95
    assert features["shape_max_extent_mm"] == pytest.approx(2 * radius, rel=0.1)
    assert features["shape_sphericity"] > shape_of(box((10, 10, 40)))["shape_sphericity"] + 0.1


def test_box_elongation_extent_and_axes():
    cube = shape_of(box((12, 12, 12)))
    rod = shape_of(box((10, 10, 40)))
    assert cube["shape_elongation"] == pytest.approx(1.0, abs=1e-6)
    assert rod["shape_elongation"] == pytest.approx(0.25, abs=0.01)  # sqrt(var minor / var major) ~ 10/40
    assert rod["shape_flatness"] == pytest.approx(0.25, abs=0.01)
    assert rod["shape_extent"] == 1.0 and rod["shape_volume_mm3"] == 4000.0
    assert rod["shape_max_extent_mm"] == pytest.approx(40.0)
    # anisotropic spacing turns the same voxels into a 10 x 20 x 20 mm slab: flat, not elongated
    slab = shape_of(box((10, 10, 40)), (1.0, 2.0, 0.5))
    assert slab["shape_volume_mm3"] == 4000.0 and slab["shape_max_extent_mm"] == pytest.approx(20.0)
    assert slab["shape_elongation"] == pytest.approx(1.0, abs=0.01) and slab["shape_flatness"] == pytest.approx(
        0.5, abs=0.01)


def test_firstorder_matches_numpy():
    rng = np.random.default_rng(1)
    mask = sphere(7.0, (1.0, 1.0, 1.0))  # 17^3
    image = rng.gamma(2.0, 30.0, size=mask.shape)
    x = image[mask]
    f = extract_features(image, mask, (1.0, 1.0, 1.0))
    expected = {
        "mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max(), "median": np.median(x),
        "p10": np.percentile(x, 10), "p90": np.percentile(x, 90),
        "iqr": np.percentile(x, 75) - np.percentile(x, 25), "skewness": scipy.stats.skew(x),
        "kurtosis": scipy.stats.kurtosis(x), "energy": np.sum(x**2), "range": np.ptp(x),
        "mad": np.mean(np.abs(x - x.mean())),
    }
    for name, value in expected.items():
        assert f[f"firstorder_{name}"] == pytest.approx(value, rel=1e-9), name
    counts = np.bincount(discretise(image, mask)[mask], minlength=N_LEVELS + 1)[1:]
    assert f["firstorder_entropy"] == pytest.approx(scipy.stats.entropy(counts, base=2))
    assert list(f) == list(FEATURE_NAMES)


def test_glcm_matches_a_naive_count():
    """The sliced, vectorised GLCM equals a loop over every voxel pair inside the mask, direction by direction."""
    rng = np.random.default_rng(2)
    levels_in = rng.integers(1, 5, size=(5, 6, 4))
    mask = rng.random((5, 6, 4)) > 0.3
    levels = np.where(mask, levels_in, 0)
    matrices = glcm_matrices(levels, mask, n_levels=4)
    assert len(matrices) == len(DIRECTIONS)
    for matrix, offset in zip(matrices, DIRECTIONS):
        counts = np.zeros((4, 4))
        for index in np.argwhere(mask):
            other = index + offset
            if np.all(other >= 0) and np.all(other < mask.shape) and mask[tuple(other)]:
                a, b = levels[tuple(index)] - 1, levels[tuple(other)] - 1
                counts[a, b] += 1
                counts[b, a] += 1
        np.testing.assert_allclose(matrix, counts / counts.sum())


def test_glcm_constant_and_checkerboard():
    mask = np.ones((8, 8, 8), dtype=bool)
    constant = extract_features(np.full((8, 8, 8), 7.0), mask, (1.0, 1.0, 1.0))
    assert constant["glcm_contrast"] == 0.0 and constant["glcm_energy"] == pytest.approx(1.0)
    assert constant["glcm_entropy"] == 0.0 and constant["glcm_homogeneity"] == pytest.approx(1.0)
    i, j, k = np.indices((8, 8, 8))
    checker = ((i + j + k) % 2).astype(np.float64)
    f = extract_features(checker, mask, (1.0, 1.0, 1.0))
    # levels 1 and 16: the 3 axis and 4 body-diagonal neighbours differ by 15, the 6 face diagonals are equal
    assert f["glcm_contrast"] == pytest.approx(15**2 * 7 / 13)
    assert f["glcm_correlation"] < -0.05 and f["glcm_energy"] < constant["glcm_energy"]
    # binary images: 0/1 and 0/255 give the same texture and shape
    f255 = extract_features(checker * 255, mask, (1.0, 1.0, 1.0))
    for name in FEATURE_NAMES:
        if not name.startswith("firstorder_"):
            assert f255[name] == pytest.approx(f[name]), name
    assert all(np.isfinite(v) for v in [*constant.values(), *f.values(), *f255.values()])


def test_empty_mask_one_voxel_and_bad_input():
    image = np.random.default_rng(3).normal(size=(6, 6, 6))
    with pytest.raises(CadError, match="mask is empty"):
        extract_features(image, np.zeros((6, 6, 6), dtype=bool), (1.0, 1.0, 1.0))
    one = np.zeros((6, 6, 6), dtype=bool)
    one[0, 5, 2] = True  # on the ROI border
    f = extract_features(image, one, (0.5, 1.0, 2.0))
    assert all(np.isfinite(v) for v in f.values())
    assert f["shape_volume_mm3"] == 1.0 and f["firstorder_mean"] == pytest.approx(image[0, 5, 2])
    assert f["glcm_contrast"] == 0.0 and f["shape_elongation"] == 0.0
    with pytest.raises(CadError, match="same shape"):
        extract_features(image, one[:5], (1.0, 1.0, 1.0))
    with pytest.raises(CadError, match="spacing"):
        extract_features(image, one, (1.0, 0.0, 1.0))
    bad = image.copy()
    bad[0, 5, 2] = np.nan
    with pytest.raises(CadError, match="non-finite"):
        extract_features(bad, one, (1.0, 1.0, 1.0))
    matrix = feature_matrix([(image, one, (1.0, 1.0, 1.0)), (image, image > 0, (1.0, 1.0, 1.0))])
    assert matrix.shape == (2, len(FEATURE_NAMES)) and np.isfinite(matrix).all()


# ---- baseline packages -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adrenal() -> dict[str, np.ndarray]:
    """Features of 200 AdrenalMNIST3D train and all 98 val samples (28^3 binary shape masks, mask = image > 0)."""
    archive = np.load(require_shared(SHARED_DATA / "medmnist3d" / "adrenalmnist3d.npz"))

    def matrix(split: str, n: int | None = None) -> np.ndarray:
        images = archive[f"{split}_images"][:n].astype(np.float64)
        return feature_matrix((image, image > 0, (1.0, 1.0, 1.0)) for image in images)

    return {"train_x": matrix("train", 200), "train_y": archive["train_labels"][:200, 0].astype(np.int64),
            "val_x": matrix("val"), "val_y": archive["val_labels"][:, 0].astype(np.int64)}


@pytest.fixture(scope="module")
def trained(adrenal) -> dict[str, BaselineClassifier]:
    return {kind: train_baseline(adrenal["train_x"], adrenal["train_y"], kind, list(FEATURE_NAMES), seed=0)
            for kind in ("svm", "rf")}


def package_card(classifier: BaselineClassifier, model_id: str) -> dict:
    return {"id": model_id, "version": "0.0.1", "task": "classification", "classes": CLASSES,
            "network": classifier.card_section()}


@pytest.mark.parametrize("kind", ["svm", "rf"])
def test_baseline_package_round_trip(kind, adrenal, trained, tmp_path: Path):
    from sklearn.metrics import roc_auc_score

    classifier = trained[kind]
    probabilities = classifier.predict_proba(adrenal["val_x"])
    assert probabilities.shape == (98, 2) and np.allclose(probabilities.sum(1), 1.0)
    assert roc_auc_score(adrenal["val_y"], probabilities[:, 1]) > 0.6
    save_package(tmp_path / f"adrenal-{kind}", package_card(classifier, f"adrenal-{kind}"), classifier.state_tensors())
    first = BaselineClassifier.from_package(find_model(tmp_path / f"adrenal-{kind}"))
    second = BaselineClassifier.from_package(find_model(tmp_path / f"adrenal-{kind}"))
    np.testing.assert_array_equal(first.predict_proba(adrenal["val_x"]), probabilities)
    np.testing.assert_array_equal(second.predict_proba(adrenal["val_x"]), probabilities)
    card = json.loads((tmp_path / f"adrenal-{kind}" / CARD_NAME).read_text())
    params = card["network"]["params"]
    assert card["network"]["name"] == "baseline" and params["kind"] == kind and params["random_state"] == 0
    assert params["hyperparameters"] == classifier.params and params["model_selection"]["best_cv_score"] > 0.5
    assert first.feature_names == list(FEATURE_NAMES) == params["features"]["names"]


def test_tampered_baseline_is_refused(trained, tmp_path: Path):
    classifier = trained["svm"]
    folder = tmp_path / "adrenal-svm"
    package = save_package(folder, package_card(classifier, "adrenal-svm"), classifier.state_tensors())
    # the card is not hashed, but a changed hyper-parameter no longer reproduces the stored reference probabilities
    card = json.loads((folder / CARD_NAME).read_text())
    card["network"]["params"]["hyperparameters"]["C"] *= 10
    (folder / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(CadError, match="does not reproduce"):
        BaselineClassifier.from_package(find_model(folder))
    card["network"]["params"]["hyperparameters"]["kernel"] = "poly"
    (folder / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(CadError, match="kernel"):
        BaselineClassifier.from_package(find_model(folder))
    data = bytearray(package.weights_path.read_bytes())
    data[-1] ^= 0xFF  # one byte of the stored arrays: the sha256 check refuses it before anything is fitted
    package.weights_path.write_bytes(bytes(data))
    with pytest.raises(CadError, match="sha256"):
        BaselineClassifier.from_package(find_model(folder))


def test_other_features_version_is_refused(trained, tmp_path: Path):
    """A package trained on another extractor version is refused (one line) before its weights are even read."""
    classifier = trained["svm"]
    folder = tmp_path / "adrenal-svm"
    package = save_package(folder, package_card(classifier, "adrenal-svm"), classifier.state_tensors())
    card = json.loads((folder / CARD_NAME).read_text())
    assert card["network"]["params"]["features"]["version"] == FEATURES_VERSION == 2
    card["network"]["params"]["features"]["version"] = 1
    (folder / CARD_NAME).write_text(json.dumps(card))
    package.weights_path.write_bytes(b"not read")  # the version check comes first: no sha256 error
    with pytest.raises(CadError) as refused:
        BaselineClassifier.from_package(find_model(folder))
    assert str(refused.value).splitlines() == [
        f"{refused.value.path}: trained on features version 1; this engine computes version 2: retrain it"]
    assert Path(refused.value.path).resolve() == folder.resolve()
    del card["network"]["params"]["features"]["version"]
    (folder / CARD_NAME).write_text(json.dumps(card))
    with pytest.raises(CadError, match="trained on no recorded features version; this engine computes version 2"):
        BaselineClassifier.from_package(find_model(folder))


@pytest.mark.parametrize("model_id", ["adrenal-svm", "adrenal-rf"])
def test_shipped_baselines_use_this_features_version(model_id):
    """The shipped packages were retrained on features version 2 (1.1.0) and load (refit reproduces them)."""
    folder = Path(__file__).resolve().parents[3] / "CADExtension" / "cadcore" / "models" / model_id
    package = find_model(folder)
    assert package.card.network["params"]["features"]["version"] == FEATURES_VERSION
    assert json.loads((folder / CARD_NAME).read_text())["version"] == "1.1.0"
    classifier = BaselineClassifier.from_package(package)
    assert classifier.feature_names == list(FEATURE_NAMES)


def test_unknown_kind_and_bad_training_input():
    x = np.random.default_rng(4).normal(size=(12, 3))
    y = np.array([0, 1] * 6)
    with pytest.raises(CadError, match="unknown baseline kind"):
        train_baseline(x, y, "knn", ["a", "b", "c"])
    with pytest.raises(CadError, match="unknown baseline kind"):
        baseline_card_section("knn", 0, ["a", "b", "c"])
    with pytest.raises(CadError, match="feature names"):
        train_baseline(x, y, "svm", ["a", "b"])
    with pytest.raises(CadError, match="two classes"):
        train_baseline(x, np.zeros(12, dtype=int), "svm", ["a", "b", "c"])


def test_feature_rows_and_roi_spacing(trained):
    """Rows are built by name (not by position), so a reordered feature dict still gives the trained order."""
    classifier = trained["rf"]
    features = extract_features(*[np.pad(np.ones((3, 4, 5)), 2)] * 2, (1.0, 1.0, 1.0))
    row = classifier.vector(dict(reversed(list(features.items()))))
    np.testing.assert_array_equal(row, list(features.values()))
    assert classifier.predict_proba(row).shape == (1, 2)
    with pytest.raises(CadError, match="shape_volume_mm3"):
        classifier.vector({k: v for k, v in features.items() if k != "shape_volume_mm3"})
    with pytest.raises(CadError, match="features"):
        classifier.predict_proba(np.zeros((1, 3)))


def test_roi_feature_spacing():
    """Extent-fitted (MedMNIST-style) ROIs give features in ROI-voxel units, the units of the training arrays."""
    assert roi_feature_spacing({"fit": "extent"}, (0.8, 0.8, 0.8)) == (1.0, 1.0, 1.0)
    assert roi_feature_spacing({"fit": "fixed", "spacing": [1, 1, 2]}, (1.0, 1.0, 2.0)) == (1.0, 1.0, 2.0)


def test_a_shape_models_features_do_not_depend_on_the_scans_intensities(tmp_path, capsys):
    """adrenal-svm classifies lesion *shape* (``roi.input: mask``, trained on mask arrays): the same mask over two
    scans with unrelated intensities must give the same features and probabilities (its first-order and texture
    features used to be computed on the scan, out of range for a model trained on 0..1 masks)."""
    import json

    import SimpleITK as sitk

    from cadcore.cli import main

    shipped = Path(__file__).resolve().parents[3] / "sample_data" / "hippocampus"
    scan = sitk.ReadImage(str(shipped / "imagesTr" / "hippocampus_015.nii.gz"), sitk.sitkFloat32)
    brighter = sitk.Cast(scan * 7.0 + 900.0, sitk.sitkFloat32)
    sitk.WriteImage(brighter, str(tmp_path / "brighter.nii.gz"))
    results = []
    for name, source in (("a", shipped / "imagesTr" / "hippocampus_015.nii.gz"), ("b", tmp_path / "brighter.nii.gz")):
        output = tmp_path / f"{name}.json"
        assert main(["classify", str(source), "-m", "adrenal-svm", "--mask",
                     str(shipped / "labelsTr" / "hippocampus_015.nii.gz"), "--label", "1", "-o", str(output)]) == 0
        results.append(json.loads(output.read_text()))
    assert results[0]["features"] == results[1]["features"]
    assert results[0]["probabilities"] == results[1]["probabilities"]
