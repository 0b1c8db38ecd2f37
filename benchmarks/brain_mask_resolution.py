"""Does a coarser conformed cube keep ``brain-mask``'s labels? MindGrab at 2 mm (128³) against 1 mm (256³).

Both run through the engine's own layer-by-layer path (``whole_volume_labels``); each mask goes back to the input's
grid, where the Dice is taken. The 1 mm cube is what ``cad segment -m brain-mask`` computes.

    PYTHONPATH=CADExtension .venv/bin/python benchmarks/brain_mask_resolution.py \\
        ../shared/weights/hippodeep/example_brain_t1.nii.gz
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import SimpleITK as sitk
import torch

from cadcore.evaluation.metrics import dice
from cadcore.preprocessing.conform import conform, labels_to_input, percentile_scale
from cadcore.registry.networks import load_network
from cadcore.registry.packages import find_model
from cadcore.segmentation.meshnet_pipeline import CHANNELS_LAST, whole_volume_labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="a whole-head volume")
    args = parser.parse_args()
    image = sitk.ReadImage(args.image)
    package = find_model("brain-mask")
    options = package.card.pipeline.options
    network = load_network(package, package.card.main_stage, "cpu").to(memory_format=CHANNELS_LAST)
    masks = {}
    for size, spacing in ((128, 2.0), (256, 1.0)):
        cube = conform(image, (size,) * 3, spacing, options.orientation, options.uint8_percentile)
        scaled = np.ascontiguousarray(percentile_scale(sitk.GetArrayViewFromImage(cube), options.percentiles).T)
        started = time.perf_counter()
        with torch.inference_mode():
            labels = whole_volume_labels(network, scaled)
        seconds = time.perf_counter() - started
        masks[size] = sitk.GetArrayFromImage(labels_to_input(labels.T, cube, image)) > 0
        print(f"{size}³ × {spacing} mm: {seconds:.1f} s, {int(masks[size].sum())} mask voxels", flush=True)
    coarse, fine = masks[128], masks[256]
    print(f"Dice (2 mm against 1 mm): {dice(coarse, fine):.4f}")


if __name__ == "__main__":
    main()
