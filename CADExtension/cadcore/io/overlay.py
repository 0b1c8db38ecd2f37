"""A quick-look PNG: labels over axial, coronal and sagittal slices through the segmentation's centre.

Both images are reoriented to LPS (identity direction) only for display, so the views look the way radiologists
expect (patient's right on the left of axial and coronal views) whatever the file's storage order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.io.readback import check_png_file
from cadcore.io.writing import atomic_path


def _views(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """(K, J, I) LPS array → axial, coronal, sagittal slices, superior up."""
    k, j, i = centre
    return [volume[k], np.flipud(volume[:, j, :]), np.flipud(volume[:, :, i])]


def render_overlay(image: sitk.Image, labels: sitk.Image, label_info: list[dict[str, Any]], path: str | Path,
                   title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    image_lps = sitk.GetArrayFromImage(sitk.DICOMOrient(image, "LPS")).astype(np.float32)
    labels_lps = sitk.GetArrayFromImage(sitk.DICOMOrient(labels, "LPS"))
    spacing = sitk.DICOMOrient(image, "LPS").GetSpacing()  # (I, J, K)
    foreground = np.argwhere(labels_lps > 0)
    centre = tuple(int(v) for v in (foreground.mean(0) if len(foreground) else np.array(labels_lps.shape) // 2))
    lo, hi = np.percentile(image_lps, [1, 99.5])
    max_value = max([int(label["value"]) for label in label_info] + [int(labels_lps.max())])
    colours = np.zeros((max_value + 1, 4))
    for label in label_info:
        colours[int(label["value"])] = [*label.get("color", [1, 0, 0])[:3], 0.45]
    cmap = ListedColormap(colours)
    aspects = [spacing[1] / spacing[0], spacing[2] / spacing[0], spacing[2] / spacing[1]]
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
    try:  # the figure is closed on failure too: a long-lived caller must not accumulate figures
        views = zip(axes, ("axial", "coronal", "sagittal"), _views(image_lps, centre), _views(labels_lps, centre),
                    aspects)
        for axis, name, base, overlay, aspect in views:
            axis.imshow(base, cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
            axis.imshow(overlay, cmap=cmap, vmin=0, vmax=max_value, aspect=aspect, interpolation="nearest")
            axis.set_title(name)
            axis.axis("off")
        handles = [Patch(color=colours[int(label["value"])][:3], label=f"{label['value']}: {label['name']}")
                   for label in label_info]
        fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), frameon=False)
        if title:
            fig.suptitle(title)
        fig.tight_layout(rect=(0, 0.08, 1, 0.95))
        with atomic_path(path, check_png_file) as tmp:  # a full disk or a cut stream is refused
            fig.savefig(tmp, dpi=110)
    finally:
        plt.close(fig)
    return Path(path)
