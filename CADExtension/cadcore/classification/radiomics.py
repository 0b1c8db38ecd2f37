"""Hand-crafted radiomic features of a lesion ROI: the input of the classical CAD baseline (:mod:`.baseline`).

A CNN's AUC means little without the number a classical pipeline gets on the same split, so CADClassify shows both.
The features follow IBSI (Zwanenburg et al., Radiology 2020) definitions where IBSI has one, are computed with
SimpleITK, scikit-image (the marching-cubes surface) and vectorised numpy, and are deterministic: the same arrays
always give the same numbers, in the fixed order of :data:`FEATURE_NAMES`, which is what a baseline package records
and checks.

Conventions (array layout ``(I, J, K)``, ``spacing`` in mm for I, J, K):

* **shape_** (on the mask only): volume = voxel count x voxel volume (IBSI "approximate volume"); surface area =
  the area of the marching-cubes mesh of the mask (``skimage.measure.marching_cubes`` at level 0.5 on the binary mask
  padded by one voxel, with the voxel spacing, then ``mesh_surface_area``): pyradiomics' and IBSI's definition, so the
  numbers are comparable with the literature. Known bias (measured in ``test_surface_area.py``): on a voxelised
  smooth object the mesh follows the voxel staircase, about +9 % above the true area at isotropic spacing and +14 to
  +21 % with slices 3.75x thicker than the pixels; an axis-aligned box reads exactly (flat faces, chamfered edges).
  Sphericity = pi^(1/3) (6V)^(2/3) / A and surface/volume ratio = A / V use the *mesh* volume V of the same mesh
  (pyradiomics' documented choice, IBSI 3.1.1): surface and volume of one closed surface, so sphericity <= 1 by the
  isoperimetric inequality (0.92 for a voxelised sphere, the staircase), where the voxel volume would let a few-voxel
  object exceed 1; elongation = sqrt(lambda_minor / lambda_major) and
  flatness = sqrt(lambda_least / lambda_major) from the principal moments lambda of the voxel-centre coordinates in mm
  (IBSI: in (0, 1], 1 = isotropic); major/minor/least axis = 4 sqrt(lambda); extent = voxels / bounding-box voxels;
  equivalent diameter = (6V/pi)^(1/3); max extent = the largest length of the mask along a principal axis (range of
  the voxel centres' projections plus one voxel's projected width).
* **firstorder_** (over the voxels inside the mask, float64): population std (ddof 0), biased skewness m3/m2^1.5,
  excess kurtosis m4/m2^2 - 3 (both 0 for a constant region), percentiles by linear interpolation (numpy default),
  energy = sum x^2, mean absolute deviation = mean |x - mean|, entropy = -sum p log2 p of the histogram of the same
  16-level discretisation as the GLCM.
* **glcm_**: intensities inside the mask discretised to Ng = 16 levels over the masked min..max (IBSI fixed bin number:
  ``floor(Ng (x - min) / (max - min)) + 1``, the maximum going to Ng; a constant region is all level 1). One GLCM per
  each of the 13 unique 3D directions at distance 1 (Chebyshev), counting only pairs whose two voxels are in the
  mask, made symmetric (P + P^T) and normalised to p(i, j); each feature is computed per direction and then averaged
  over the directions that have pairs (IBSI "3D:avg"). With i, j in 1..Ng:
  contrast = sum (i-j)^2 p; dissimilarity = sum |i-j| p; homogeneity = sum p / (1 + (i-j)^2) (inverse difference
  moment, as scikit-image's ``homogeneity``); energy = angular second moment = sum p^2; correlation =
  sum (i - mu)(j - mu) p / sigma^2 (mu, sigma of the symmetric marginal; 1 when sigma = 0, as in scikit-image and
  pyradiomics); entropy = -sum p log2 p; joint average = sum i p.

Undefined values are 0, never NaN: a one-voxel mask has no GLCM pairs (all glcm_ features 0) and no spread (elongation
and flatness 0). Binary images (0/1 or 0/255, e.g. AdrenalMNIST3D's shape masks) work like any other intensities.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from cadcore.errors import CadError

# Bump when a definition changes: cached feature matrices and baseline packages record it, and a package trained
# on another version is refused. 2: marching-cubes surface area and mesh volume in sphericity/surface ratio.
FEATURES_VERSION = 2
N_LEVELS = 16

SHAPE_NAMES = (
    "shape_volume_mm3", "shape_surface_area_mm2", "shape_surface_volume_ratio", "shape_sphericity",
    "shape_elongation", "shape_flatness", "shape_extent", "shape_equivalent_diameter_mm", "shape_major_axis_mm",
    "shape_minor_axis_mm", "shape_least_axis_mm", "shape_max_extent_mm",
)
FIRSTORDER_NAMES = (
    "firstorder_mean", "firstorder_std", "firstorder_min", "firstorder_max", "firstorder_median", "firstorder_p10",
    "firstorder_p90", "firstorder_iqr", "firstorder_skewness", "firstorder_kurtosis", "firstorder_energy",
    "firstorder_entropy", "firstorder_range", "firstorder_mad",
)
GLCM_NAMES = (
    "glcm_contrast", "glcm_dissimilarity", "glcm_homogeneity", "glcm_energy", "glcm_correlation", "glcm_entropy",
    "glcm_joint_average",
)
FEATURE_NAMES: tuple[str, ...] = SHAPE_NAMES + FIRSTORDER_NAMES + GLCM_NAMES

# The 13 unique neighbour offsets of a 3D 26-neighbourhood (the other 13 are their negatives; symmetry covers them).
DIRECTIONS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (0, 1, -1), (1, 0, 1), (1, 0, -1), (1, 1, 0), (1, -1, 0),
    (1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1),
)


def extract_features(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """All features of one ROI, as ``{name: value}`` in :data:`FEATURE_NAMES` order (see the module docstring).

    ``image`` (I, J, K) intensities, ``mask`` (I, J, K) lesion mask (pass ``np.ones_like(image, bool)`` when there is
    none), ``spacing`` the voxel size in mm along I, J, K. Raises :class:`CadError` for an empty mask, mismatched
    shapes, a bad spacing or non-finite intensities inside the mask.
    """
    image, mask, spacing_mm = _checked(image, mask, spacing)
    box = tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(mask))
    image, mask = image[box], mask[box]  # every feature is invariant to cropping to the mask: much faster
    values = image[mask].astype(np.float64)
    levels = discretise(image, mask)
    features = {**shape_features(mask, spacing_mm), **firstorder_features(values, levels[mask]),
                **glcm_features(levels, mask)}
    return {name: _finite(features[name]) for name in FEATURE_NAMES}


def feature_matrix(samples: Iterable[tuple[np.ndarray, np.ndarray, Sequence[float]]]) -> np.ndarray:
    """``(N, len(FEATURE_NAMES))`` float64 matrix from ``(image, mask, spacing)`` samples, rows in input order."""
    rows = [list(extract_features(image, mask, spacing).values()) for image, mask, spacing in samples]
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))


def _checked(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float]):
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape != mask.shape:
        raise CadError(f"image {image.shape} and mask {mask.shape} must be 3D arrays of the same shape")
    if mask.dtype != bool:
        mask = mask != 0
    spacing_mm = tuple(float(s) for s in spacing)
    if len(spacing_mm) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_mm):
        raise CadError(f"spacing must be three positive numbers (mm), got {tuple(spacing)}")
    if not mask.any():
        raise CadError("mask is empty: no voxel to compute features on")
    if not np.isfinite(image[mask]).all():
        raise CadError("image has non-finite values (NaN/inf) inside the mask")
    return image, mask, spacing_mm


def _finite(value: float) -> float:
    value = float(value)
    return value if np.isfinite(value) else 0.0


def discretise(image: np.ndarray, mask: np.ndarray, n_levels: int = N_LEVELS) -> np.ndarray:
    """IBSI fixed-bin-number discretisation over the masked min..max: levels 1..n_levels inside, 0 outside."""
    values = image[mask].astype(np.float64)
    low, high = float(values.min()), float(values.max())
    levels = np.zeros(image.shape, dtype=np.int64)
    if high > low:
        scaled = np.floor(n_levels * (values - low) / (high - low)).astype(np.int64) + 1
        levels[mask] = np.minimum(scaled, n_levels)
    else:
        levels[mask] = 1
    return levels


def shape_features(mask: np.ndarray, spacing: tuple[float, float, float]) -> dict[str, float]:
    """Volume, marching-cubes surface, sphericity and principal-axis features (principal axes: SimpleITK)."""
    import SimpleITK as sitk

    padded = np.pad(mask, 1)  # a mask touching the ROI border still gets a closed surface
    area, mesh_volume = mesh_area_volume(padded, spacing)
    # SimpleITK wants (K, J, I) arrays.
    label = sitk.GetImageFromArray(padded.astype(np.uint8).transpose(2, 1, 0))
    label.SetSpacing(spacing)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(label)
    volume = float(stats.GetPhysicalSize(1))
    least, minor, major = (max(float(m), 0.0) for m in stats.GetPrincipalMoments(1))  # ascending, mm^2
    axes = np.asarray(stats.GetPrincipalAxes(1), dtype=np.float64).reshape(3, 3)  # rows, physical (I, J, K)
    centres = np.argwhere(mask).astype(np.float64) * np.asarray(spacing)
    projected = centres @ axes.T
    widths = np.abs(axes) @ np.asarray(spacing)  # one voxel's width along each principal axis
    extents = projected.max(axis=0) - projected.min(axis=0) + widths
    return {
        "shape_volume_mm3": volume,
        "shape_surface_area_mm2": area,
        "shape_surface_volume_ratio": area / mesh_volume if mesh_volume > 0 else 0.0,
        "shape_sphericity": np.pi ** (1 / 3) * (6 * mesh_volume) ** (2 / 3) / area if area > 0 else 0.0,
        "shape_elongation": np.sqrt(minor / major) if major > 0 else 0.0,
        "shape_flatness": np.sqrt(least / major) if major > 0 else 0.0,
        "shape_extent": float(mask.sum()) / float(mask.size),  # mask is already cropped to its bounding box
        "shape_equivalent_diameter_mm": (6 * volume / np.pi) ** (1 / 3),
        "shape_major_axis_mm": 4 * np.sqrt(major),
        "shape_minor_axis_mm": 4 * np.sqrt(minor),
        "shape_least_axis_mm": 4 * np.sqrt(least),
        "shape_max_extent_mm": float(extents.max()),
    }


def mesh_area_volume(padded: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """Area (mm^2) and enclosed volume (mm^3) of the marching-cubes mesh of a binary mask padded by >= 1 voxel.

    pyradiomics' convention: the iso-surface at 0.5 of the 0/1 mask, so every vertex is the midpoint of an edge
    between an inside and an outside voxel centre. The volume is the divergence-theorem sum of the signed tetrahedra
    (origin, triangle), whose sign depends only on the mesh's orientation: its absolute value is the enclosed volume.
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    # In voxel units every vertex is a half-integer, exact in scikit-image's float32; the spacing is applied in float64.
    vertices, faces, _, _ = marching_cubes(padded.astype(np.float32), level=0.5)
    vertices = vertices.astype(np.float64) * np.asarray(spacing, dtype=np.float64)
    triangles = vertices[faces]
    signed = np.einsum("ij,ij->i", triangles[:, 0], np.cross(triangles[:, 1], triangles[:, 2])).sum() / 6.0
    return float(mesh_surface_area(vertices, faces)), abs(float(signed))


def firstorder_features(values: np.ndarray, levels: np.ndarray) -> dict[str, float]:
    """Intensity statistics of the masked voxels (``levels``: their discretised values, for the entropy)."""
    mean = values.mean()
    centred = values - mean
    m2 = np.mean(centred**2)
    p10, p25, median, p75, p90 = np.percentile(values, [10, 25, 50, 75, 90])
    constant = m2 <= 1e-12 * max(mean * mean, 1.0)  # relative: float noise on a constant region is not spread
    counts = np.bincount(levels, minlength=N_LEVELS + 1)[1:]
    return {
        "firstorder_mean": mean,
        "firstorder_std": np.sqrt(m2),
        "firstorder_min": values.min(),
        "firstorder_max": values.max(),
        "firstorder_median": median,
        "firstorder_p10": p10,
        "firstorder_p90": p90,
        "firstorder_iqr": p75 - p25,
        "firstorder_skewness": 0.0 if constant else np.mean(centred**3) / m2**1.5,
        "firstorder_kurtosis": 0.0 if constant else np.mean(centred**4) / m2**2 - 3.0,
        "firstorder_energy": np.sum(values**2),
        "firstorder_entropy": _entropy(counts / counts.sum()),
        "firstorder_range": values.max() - values.min(),
        "firstorder_mad": np.mean(np.abs(centred)),
    }


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0 turns -0.0 into 0.0


def _shifted(array: np.ndarray, offset: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Views ``(a, b)`` with ``b[x] = array[x + offset]``: every voxel pair at that offset, by slicing."""
    first, second = [], []
    for step in offset:
        if step > 0:
            first.append(slice(0, -step))
            second.append(slice(step, None))
        elif step < 0:
            first.append(slice(-step, None))
            second.append(slice(0, step))
        else:
            first.append(slice(None))
            second.append(slice(None))
    return array[tuple(first)], array[tuple(second)]


def glcm_matrices(levels: np.ndarray, mask: np.ndarray, n_levels: int = N_LEVELS) -> np.ndarray:
    """Symmetric, normalised GLCMs ``(D, Ng, Ng)``, one per direction that has at least one in-mask pair."""
    matrices = []
    for offset in DIRECTIONS:
        level_a, level_b = _shifted(levels, offset)
        mask_a, mask_b = _shifted(mask, offset)
        both = mask_a & mask_b
        if not both.any():
            continue
        codes = (level_a[both] - 1) * n_levels + (level_b[both] - 1)
        counts = np.bincount(codes, minlength=n_levels * n_levels).reshape(n_levels, n_levels).astype(np.float64)
        counts += counts.T
        matrices.append(counts / counts.sum())
    return np.asarray(matrices, dtype=np.float64).reshape(len(matrices), n_levels, n_levels)


def glcm_features(levels: np.ndarray, mask: np.ndarray, n_levels: int = N_LEVELS) -> dict[str, float]:
    """GLCM features averaged over directions (IBSI 3D:avg); all 0 when no direction has a pair (one voxel)."""
    p = glcm_matrices(levels, mask, n_levels)
    if len(p) == 0:
        return dict.fromkeys(GLCM_NAMES, 0.0)
    i, j = np.meshgrid(np.arange(1, n_levels + 1, dtype=np.float64), np.arange(1, n_levels + 1, dtype=np.float64),
                       indexing="ij")
    diff = i - j
    mu = np.einsum("dij,ij->d", p, i)  # symmetric: the row and column marginals are the same
    var = np.einsum("dij,dij->d", p, (i[None] - mu[:, None, None]) ** 2)
    covariance = np.einsum("dij,dij->d", p, (i[None] - mu[:, None, None]) * (j[None] - mu[:, None, None]))
    flat = var <= 1e-12
    correlation = np.where(flat, 1.0, covariance / np.where(flat, 1.0, var))
    logs = np.log2(np.where(p > 0, p, 1.0))
    per_direction = {
        "glcm_contrast": np.einsum("dij,ij->d", p, diff**2),
        "glcm_dissimilarity": np.einsum("dij,ij->d", p, np.abs(diff)),
        "glcm_homogeneity": np.einsum("dij,ij->d", p, 1.0 / (1.0 + diff**2)),
        "glcm_energy": np.einsum("dij,dij->d", p, p),
        "glcm_correlation": correlation,
        "glcm_entropy": -np.einsum("dij,dij->d", p, logs) + 0.0,
        "glcm_joint_average": mu,
    }
    return {name: float(np.mean(per_direction[name])) for name in GLCM_NAMES}
