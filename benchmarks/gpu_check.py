"""CUDA check and figures (a script, not a test; needs a CUDA GPU): does every engine path give on the GPU what it
gives on the CPU, and how much faster is it?

CI has no GPU, so the CUDA code paths (fp16 autocast in sliding-window inference, the cascade's coarse stage,
Grad-CAM's backward pass, training, NCCL under torchrun) are exercised only here. On one machine, side by side:

* **segmentation** (in-process ``segment_image``, one warm-up, then the median of ``--repeats`` runs per device):
  label agreement GPU vs CPU (fraction of identical voxels, mean Dice), Dice against the ground truth on each device,
  and the output grid checked against the input's (size, spacing, origin, direction) on each device. Cases:
  hippocampus-unet on hippocampus volumes, brain-tumour-cascade on native tumour scans, and a 512x512x300 CT (from
  ``benchmarks/inference.py``: the spleen network, seeded random weights; timing and agreement only);
* **classification**: adrenal-resnet on AdrenalMNIST3D validation volumes with a Grad-CAM heatmap: largest
  probability difference GPU vs CPU, predicted class agreement, heatmap correlation;
* **training**: ``cad train --device cuda`` (seconds per epoch, best validation Dice, a package written) and
  ``torchrun --nproc_per_node 1 -m cadcore train --device cuda`` (NCCL process group; exits 0, writes a package).

    python benchmarks/gpu_check.py --hippocampus ../shared/data/msd_task04_hippocampus \\
        --tumour ../shared/data/tcia_brain_tumor_progression/native --ct SOURCE_CT \\
        --adrenal ../shared/data/medmnist3d/adrenalmnist3d.npz --json benchmarks/results/gpu_check.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "hippocampus"
TUMOUR_EVAL = ["PGBM-001_19911119", "PGBM-001_19920402", "PGBM-003_19950329", "PGBM-003_19951017"]


def timed(run: Callable[[], Any], repeats: int, cuda: bool) -> tuple[Any, float, float | None]:
    """(last result, median seconds, peak GPU MiB) after one warm-up run (CUDA context, cuDNN plans)."""
    import torch

    run()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    peak = round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None
    return result, round(statistics.median(seconds), 3), peak


def segmentation_case(name: str, image_path: Path, model: str, truth_path: Path | None, repeats: int) -> dict:
    import SimpleITK as sitk
    from inference import agreement

    from cadcore.evaluation.metrics import dice
    from cadcore.io.images import same_grid
    from cadcore.registry.packages import find_model
    from cadcore.segmentation.predict import segment_image

    image, package = sitk.ReadImage(str(image_path)), find_model(model)
    row: dict[str, Any] = {"case": name, "model": package.id, "size": list(image.GetSize())}
    labels = {}
    for device in ("cpu", "cuda"):
        result, seconds, peak = timed(lambda on=device: segment_image(image, package, device=on), repeats,
                                      device == "cuda")
        labels[device] = sitk.GetArrayFromImage(result.labels)
        row[device] = {"seconds": seconds, "stages_s": result.timings,
                       "same_grid_as_input": same_grid(result.labels, image, tolerance=1e-6),
                       **({"peak_gpu_mib": peak} if peak is not None else {}),
                       **({"cascade": {k: result.cascade[k] for k in ("used", "roi_fraction", "fallback")
                                       if k in result.cascade}} if result.cascade else {})}
        if truth_path is not None:
            truth = sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path)))
            values = [v for v in np.unique(truth) if v != 0]
            row[device]["dice_vs_truth"] = round(float(np.mean([dice(labels[device] == v, truth == v)
                                                                for v in values])), 4) if values else None
    row["gpu_vs_cpu"] = {k: round(v, 6) for k, v in agreement(labels["cuda"], labels["cpu"]).items()}
    row["speedup"] = round(row["cpu"]["seconds"] / max(row["cuda"]["seconds"], 1e-9), 1)
    print(f"{name:<28} cpu {row['cpu']['seconds']:>7.3f} s  cuda {row['cuda']['seconds']:>7.3f} s  "
          f"x{row['speedup']:<6} agreement {row['gpu_vs_cpu']}", flush=True)
    return row


def hippocampus_cases(folder: Path, limit: int) -> list[tuple[str, Path, Path]]:
    """hippocampus-unet's own validation cases (never trained on) found in ``folder``, else the repo's samples."""
    card = json.loads((REPO / "CADExtension/cadcore/models/hippocampus-unet/model.json").read_text())
    found = [(c, folder / "imagesTr" / f"{c}.nii.gz", folder / "labelsTr" / f"{c}.nii.gz")
             for c in sorted(card["training"]["split"]["val"])]
    found = [f for f in found if f[1].exists()] or [
        (p.name[:-7], p, SAMPLE / "labelsTr" / p.name) for p in sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))]
    return found[:limit]


def classification_check(npz: Path, limit: int) -> dict:
    import SimpleITK as sitk

    from cadcore.classification.predict import classify_image
    from cadcore.registry.packages import find_model

    package = find_model("adrenal-resnet")
    archive = np.load(npz)
    images = archive["val_images"][:limit]
    differences, same_class, correlations, seconds = [], 0, [], {"cpu": 0.0, "cuda": 0.0}
    for volume in images:
        image = sitk.GetImageFromArray(volume.astype(np.float32))  # MedMNIST: 1 mm voxels, a shape mask
        mask = sitk.GetImageFromArray((volume > volume.max() / 2).astype(np.uint8))
        mask.CopyInformation(image)
        out = {}
        for device in ("cpu", "cuda"):
            started = time.perf_counter()
            out[device] = classify_image(image, package, mask, 1, heatmap=True, device=device)
            seconds[device] += time.perf_counter() - started
        p = {d: np.array(list(out[d].report["probabilities"].values())) for d in out}
        differences.append(float(np.abs(p["cuda"] - p["cpu"]).max()))
        same_class += out["cuda"].report["predicted"] == out["cpu"].report["predicted"]
        maps = [sitk.GetArrayFromImage(out[d].heatmap).ravel() for d in ("cpu", "cuda")]
        correlations.append(float(np.corrcoef(*maps)[0, 1]) if maps[0].std() > 0 and maps[1].std() > 0 else 1.0)
    row = {"model": package.id, "n_volumes": len(images), "max_probability_difference": round(max(differences), 6),
           "same_predicted_class": same_class, "heatmap_correlation_min": round(min(correlations), 4),
           "heatmap_correlation_median": round(statistics.median(correlations), 4),
           "seconds_per_volume": {d: round(s / len(images), 3) for d, s in seconds.items()}}
    print(f"classification: {row}", flush=True)
    return row


def training_check(data: Path, epochs: int, work: Path) -> dict:
    """``cad train`` on CUDA, then the same for 2 epochs under torchrun with one process (NCCL)."""
    common = ["train", "--data", str(data), "--patch-size", "40,56,40", "--filters", "16,32,64,128",
              "--batch-size", "2", "--val-every", "1", "--device", "cuda", "--seed", "0"]
    result: dict[str, Any] = {}
    for name, launcher, n_epochs in (("cad_train", [sys.executable, "-m", "cadcore"], epochs),
                                     ("torchrun_1_process", [sys.executable, "-m", "torch.distributed.run",
                                                             "--nproc_per_node", "1", "-m", "cadcore"], 2)):
        out = work / name
        started = time.perf_counter()
        completed = subprocess.run([*launcher, *common, "--epochs", str(n_epochs), "-o", str(out)], cwd=REPO,
                                   capture_output=True, text=True)
        row: dict[str, Any] = {"exit_code": completed.returncode, "wall_s": round(time.perf_counter() - started, 1),
                               "package_written": (out / "model.json").exists(), "epochs": n_epochs}
        if completed.returncode:
            row["stderr_tail"] = completed.stderr[-1500:]
        if (out / "training_log.csv").exists():
            rows = list(csv.DictReader(open(out / "training_log.csv")))
            seconds = [float(r["seconds"]) for r in rows]
            row["seconds_per_epoch"] = round((seconds[-1] - seconds[0]) / max(1, len(seconds) - 1), 2) \
                if len(seconds) > 1 else seconds[0]
            row["last_loss"] = rows[-1].get("loss")
        if (out / "training_summary.json").exists():
            summary = json.loads((out / "training_summary.json").read_text())
            row["best_mean_dice"], row["best_epoch"] = summary.get("best_mean_dice"), summary.get("best_epoch")
        result[name] = row
        print(f"{name}: {row}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hippocampus", type=Path, default=REPO.parent / "shared/data/msd_task04_hippocampus")
    parser.add_argument("--max-hippocampus", type=int, default=42)
    parser.add_argument("--tumour", type=Path, default=REPO.parent / "shared/data/tcia_brain_tumor_progression/native")
    parser.add_argument("--ct", type=Path, default=None, help="source CT for the 512x512x300 case (default: "
                        "benchmarks/inference.py's)")
    parser.add_argument("--adrenal", type=Path, default=REPO.parent / "shared/data/medmnist3d/adrenalmnist3d.npz")
    parser.add_argument("--max-adrenal", type=int, default=32)
    parser.add_argument("--train-data", type=Path, default=None, help="dataset.json for the training check "
                        "(default: the repo's hippocampus sample)")
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check.json")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    report: dict[str, Any] = {
        "benchmark": "CUDA vs CPU on one machine: agreement, exact grids, speed; training and torchrun on CUDA",
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
        "hardware": f"{platform.machine()}, {os.cpu_count()} CPUs", "segmentation": [],
        "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]])}
    started = time.time()
    for case, image, truth in hippocampus_cases(args.hippocampus, args.max_hippocampus):
        report["segmentation"].append(segmentation_case(case, image, "hippocampus-unet", truth, args.repeats))
    for case in TUMOUR_EVAL:
        image = args.tumour / f"{case}_t1post.nii.gz"
        if image.exists():
            report["segmentation"].append(segmentation_case(case, image, "brain-tumour-cascade",
                                                            args.tumour / f"{case}_mask.nii.gz", args.repeats))
    with tempfile.TemporaryDirectory() as scratch:
        import inference

        if args.ct is not None:
            inference.SOURCE_CT = args.ct
        if inference.SOURCE_CT.exists():
            ct = inference.build_ct(Path(scratch))
            spleen = inference.build_spleen_package(Path(scratch), ct)
            report["segmentation"].append(segmentation_case("ct_512x512x300", ct, str(spleen), None, args.repeats))
        if args.adrenal.exists():
            report["classification"] = classification_check(args.adrenal, args.max_adrenal)
        report["training"] = training_check(args.train_data or SAMPLE / "dataset.json", args.train_epochs,
                                            Path(scratch))
    rows = report["segmentation"]
    report["summary"] = {
        "segmentation_cases": len(rows),
        "all_grids_exact": all(r[d]["same_grid_as_input"] for r in rows for d in ("cpu", "cuda")),
        "min_voxel_agreement": min(r["gpu_vs_cpu"]["identical"] for r in rows) if rows else None,
        "min_label_dice_gpu_vs_cpu": min(r["gpu_vs_cpu"]["dice"] for r in rows) if rows else None,
        "total_s": round(time.time() - started)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"]), f"-> {args.json}")


if __name__ == "__main__":
    main()
