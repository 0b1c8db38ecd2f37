"""The MONAI-bundle rows of ``benchmarks/inference.py``: ``cad segment -m BUNDLE_DIR`` run as a user runs it.

The bundle has the Model Zoo ``spleen_ct_segmentation`` layout (``configs/inference.json`` with LoadImaged,
EnsureChannelFirstd, Orientationd RAS, Spacingd 1.5x1.5x2 mm bilinear, ScaleIntensityRanged -57..164, EnsureTyped;
UNet 16-256 with 2 residual units and batch norm; SlidingWindowInferer 96³, sw_batch_size 4; Activationsd softmax,
Invertd on the softmax, AsDiscreted argmax, SaveImaged; ``configs/metadata.json``; ``models/model.pt``), with the
benchmark case's package weights, and the package card's overlap and blending mode so that its labels compare with
the plain MONAI baseline's (which uses the card's). Rows:

* ``bundle``: ``cad segment -m BUNDLE_DIR`` (translated onto the engine's path);
* ``bundle_monai``: the same with ``CAD_BUNDLE_PATH=monai.bundle`` (the bundle's own transforms through
  ``monai.bundle``, i.e. what ``cad`` did before the translation).

Each is a fresh process under ``/usr/bin/time -v`` (wall time and maximum resident set size as it reports them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

SPLEEN_ROI = [96, 96, 96]
UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
        "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2, "norm": "batch"}


def bundle_config(overlap: float, mode: str) -> dict:
    """``configs/inference.json`` of the spleen_ct_segmentation layout (evaluator and data loader kept, unused)."""
    pre = [{"_target_": "LoadImaged", "keys": "image"}, {"_target_": "EnsureChannelFirstd", "keys": "image"},
           {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
           {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
           {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
            "clip": True},
           {"_target_": "EnsureTyped", "keys": "image"}]
    post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": ".nii.gz",
             "output_dtype": "$numpy.float32", "output_postfix": "trans", "separate_folder": True}]
    return {"imports": ["$import glob", "$import os"], "bundle_root": ".", "output_dir": "$@bundle_root + '/eval'",
            "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
            "network_def": UNET, "network": "$@network_def.to(@device)",
            "preprocessing": {"_target_": "Compose", "transforms": pre},
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": SPLEEN_ROI, "sw_batch_size": 4,
                        "overlap": overlap, "mode": mode},
            "postprocessing": {"_target_": "Compose", "transforms": post}}


METADATA = {"name": "Spleen CT segmentation", "version": "0.5.9", "monai_version": "1.3.0",
            "description": "spleen_ct_segmentation layout with a benchmark package's weights (benchmark only)",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                     "spatial_shape": SPLEEN_ROI, "channel_def": {"0": "image"}}},
                "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                     "spatial_shape": SPLEEN_ROI,
                                     "channel_def": {"0": "background", "1": "spleen"}}}}}


def build_bundle(cache: Path, package_dir: str) -> Path:
    """``cache/bundle-<package>/`` in the spleen_ct_segmentation layout with the package's weights and settings."""
    import torch

    from cadcore.registry.networks import load_network
    from cadcore.registry.packages import find_model

    package = find_model(package_dir)
    folder = cache / f"bundle-{package.id}"
    if (folder / "models" / "model.pt").exists():
        return folder
    stage = package.card.main_stage
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    config = bundle_config(float(stage.inference.overlap), str(stage.inference.mode))
    (folder / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=2))
    network = load_network(package, stage, torch.device("cpu"))
    torch.save({k: v.contiguous() for k, v in network.state_dict().items()}, folder / "models" / "model.pt")
    return folder


def run_bundle_cli(bundle: Path, image: str, out: Path, threads: int | None, monai_path: bool, log: Path) -> dict:
    """``cad segment IMAGE -m BUNDLE -o OUT`` in a fresh process under ``/usr/bin/time -v``."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env.pop("CAD_BUNDLE_PATH", None)
    if monai_path:
        env["CAD_BUNDLE_PATH"] = "monai.bundle"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "cadcore", "segment", image, "-m", str(bundle),
               "-o", str(out), "--device", "cpu", "--force"]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    with open(log, "a") as handle:
        handle.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", done.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert wall and rss, "no /usr/bin/time -v report"
    seconds = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
    sidecar = json.loads(Path(f"{out}.json").read_text())
    return {"wall_s": seconds, "total_s": seconds, "peak_rss_mib": int(rss.group(1)) / 1024,
            "in_process_s": sidecar["timings"]["total_s"], "warnings": sidecar.get("warnings", []),
            **{k: v for k, v in sidecar["timings"].items() if k != "total_s"}}


def labels_of(path: Path) -> np.ndarray:
    """A written labelmap as (I, J, K), like the workers' arrays; its grid is checked against the input's later."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path))).transpose(2, 1, 0)


def same_grid_as_input(path: Path, image: str) -> bool:
    import SimpleITK as sitk

    written, source = sitk.ReadImage(str(path)), sitk.ReadImage(image)
    return (written.GetSize() == source.GetSize() and written.GetSpacing() == source.GetSpacing()
            and written.GetOrigin() == source.GetOrigin() and written.GetDirection() == source.GetDirection())


def compare(summary: dict, scratch: Path, name: str, image: str) -> dict:
    """The issue's figures for the bundle rows: speed-ups over the plain MONAI baseline and over the bundle through
    ``monai.bundle``, Dice of the bundle's labels against the baseline's, and whether the output has the input's
    exact grid."""
    row = summary["bundle"]
    out: dict = {"bundle_total_s": row["total_s"], "bundle_peak_rss_mib": row["peak_rss_mib"],
                 "exact_grid": same_grid_as_input(scratch / f"{name}_bundle.nii.gz", image)}
    if "bundle_monai" in summary:
        out["bundle_monai_over_bundle"] = round(summary["bundle_monai"]["total_s"] / summary["bundle"]["total_s"], 2)
    baseline = scratch / f"{name}_baseline.npy"
    if "baseline" in summary and baseline.exists():
        out["baseline_over_bundle"] = round(summary["baseline"]["total_s"] / summary["bundle"]["total_s"], 2)
        labels, theirs = labels_of(scratch / f"{name}_bundle.nii.gz"), np.load(baseline)
        both = np.count_nonzero((labels > 0) & (theirs > 0))
        total = max(1, np.count_nonzero(labels) + np.count_nonzero(theirs))
        out["dice_vs_baseline"] = round(float(2.0 * both / total), 5)
    return out
