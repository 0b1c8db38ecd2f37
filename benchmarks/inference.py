"""CPU inference speed: ``cad segment`` against the plain MONAI pipeline, same volume, same weights, one run.

    .venv/bin/python benchmarks/inference.py --json runs/bench/inference.json [--repeats 3] [--threads N]
        [--skip-baseline] [--cases ct,hippocampus,tumour]

Cases (inputs and model package built once under ``runs/bench/``):
* ``ct``: 512x512x300 at 0.8 mm, resampled (SimpleITK, linear, direction kept, air outside) from the real anatomy of
  ``../shared/data/totalsegmentator_examples/example_ct.nii.gz``; a cadcore package with the MONAI
  ``spleen_ct_segmentation`` network (UNet 16-256, 2 residual units, batch norm), 1.5x1.5x2 mm, RAS, window
  -57..164, linear resampling on MONAI Spacingd's grid (the same working array as the bundle's transforms), patch
  96³, overlap 0.25, with weights fitted to the example CT's spleen by ``benchmarks/spleen_ct_weights.py`` (a
  fixture: more confident outputs than random weights), and a 3 mm ``fast`` network run by ``cad segment --fast``.
* ``ct_native``: the same extent of the same CT at the network's own 1.5x1.5x2 mm in RAS (273x273x120): neither
  pipeline resamples (the network-time comparison without resampling).
* ``hippocampus``: ``sample_data/hippocampus/imagesTr/hippocampus_015.nii.gz``, shipped ``hippocampus-unet``.
* ``tumour``: a TCIA Brain-Tumor-Progression T1 post-contrast scan (oblique, 0.69x0.69x6.5 mm), the spleen network
  with seeded random weights (timing only).

Each measurement is a fresh process (peak RSS = its VmHWM): ``ours`` = ``segment_image`` (file -> labels in memory);
``cli`` = ``cad segment`` end to end (imports, writing ``.nii.gz``); ``fast`` = ``cad segment --fast`` when the card
has a fast resolution (its agreement is with the full-resolution reference: a measure of what fast mode changes, not
a claim of equality); ``baseline`` = LoadImaged, EnsureChannelFirstd, Orientationd, Spacingd (bilinear), intensity,
``sliding_window_inference`` (sw_batch_size 4, the card's patch and overlap, Gaussian like the card), softmax,
Invertd, argmax, same weights; ``reference`` (once) = cadcore before the speed work (SimpleITK resampling with the
card's interpolation, fp32 sw_batch_size 2, every class's map resampled by SimpleITK, argmax): the fp32
reference all labels are compared with. Floor: conv FLOPs of the windows run over a large conv3d's measured GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "runs" / "bench"
SOURCE_CT = REPO.parent / "shared" / "data" / "totalsegmentator_examples" / "example_ct.nii.gz"
TUMOUR = REPO.parent / "shared" / "data" / "tcia_brain_tumor_progression" / "native" / "PGBM-001_19911119_t1post.nii.gz"
HIPPOCAMPUS = REPO / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_015.nii.gz"
SPLEEN_NETWORK = {"name": "UNet", "params": {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                             "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2],
                                             "num_res_units": 2, "norm": "batch"}}
SPLEEN_PREPROCESSING = {"orientation": "RAS", "spacing": [1.5, 1.5, 2.0],
                        "normalization": {"kind": "ct", "window": [-57.0, 164.0]}}


def build_ct(cache: Path, native: bool = False, full_size: tuple[int, ...] = (512, 512, 300)) -> Path:
    """512x512x300 at 0.8 mm around the centre of the example CT (real anatomy), int16, air outside; ``native``: the
    same extent at the spleen network's own 1.5x1.5x2 mm in RAS, so neither pipeline resamples."""
    import SimpleITK as sitk

    tag = "x".join(str(s) for s in full_size)
    path = cache / (f"ct_native_1.5x1.5x2_{tag}.nii.gz" if native else f"ct_{tag}.nii.gz")
    if path.exists():
        return path
    source = sitk.ReadImage(str(SOURCE_CT))
    size, spacing = np.array(full_size), np.array([0.8, 0.8, 0.8])
    if native:
        source = sitk.DICOMOrient(source, "RAS")
        spacing = np.array(SPLEEN_PREPROCESSING["spacing"])
        size = np.round(np.array(full_size) * 0.8 / spacing).astype(int)
    direction = np.array(source.GetDirection()).reshape(3, 3)
    centre = np.array(source.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in source.GetSize()]))
    origin = centre - direction @ (spacing * (size - 1) / 2)
    image = sitk.Resample(source, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                          spacing.tolist(), source.GetDirection(), -1024.0, sitk.sitkInt16)
    cache.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def build_spleen_package(cache: Path, ct: Path) -> Path:
    """The spleen bundle's network with seeded random weights in a cadcore package (bias set for ~25% foreground)."""
    import SimpleITK as sitk
    import torch

    from cadcore.preprocessing.working_space import prepare
    from cadcore.registry.networks import build_network
    from cadcore.registry.packages import save_package

    folder = cache / "spleen-random"
    if (folder / "model.json").exists():
        return folder
    torch.manual_seed(0)
    network = build_network(SPLEEN_NETWORK).eval()
    working = prepare(sitk.ReadImage(str(ct)), SPLEEN_PREPROCESSING).array
    centre = [s // 2 for s in working.shape]
    window = torch.from_numpy(working[tuple(slice(c - 48, c + 48) for c in centre)].copy())[None, None]
    with torch.inference_mode():
        logits = network(window)[0]
        body = window[0, 0] > 0
        network.state_dict()["model.2.1.conv.unit0.conv.bias"][1] -= torch.quantile(
            (logits[1] - logits[0])[body], 0.75)
    card = {"format_version": 1, "id": "spleen-random", "version": "0.0.0", "task": "segmentation", "modality": "CT",
            "description": "MONAI spleen_ct_segmentation network with seeded random weights (benchmark only)",
            "network": SPLEEN_NETWORK, "labels": [{"value": 1, "name": "Spleen", "color": [0.62, 0.24, 0.24]}],
            "preprocessing": SPLEEN_PREPROCESSING,
            "inference": {"patch_size": [96, 96, 96], "overlap": 0.25, "mode": "gaussian"}, "postprocessing": {}}
    save_package(folder, card, network.state_dict())
    return folder


def build_trained_spleen(cache: Path) -> Path:
    folder = cache / "spleen-trained"
    if not (folder / "model.json").exists():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "spleen_ct_weights.py"), "-o", str(folder)],
                       check=True)
    return folder


def cases(cache: Path, size: tuple[int, ...] = (512, 512, 300), random_ct: bool = False) -> dict[str, dict]:
    """``random_ct``: the CT cases with the seeded random weights (a quick check that needs no training)."""
    ct = build_ct(cache, full_size=size)
    spleen = str(build_spleen_package(cache, ct))
    trained = spleen if random_ct else str(build_trained_spleen(cache))
    return {"ct": {"image": str(ct), "model": trained},
            "ct_native": {"image": str(build_ct(cache, native=True, full_size=size)), "model": trained},
            "hippocampus": {"image": str(HIPPOCAMPUS), "model": "hippocampus-unet"},
            "tumour": {"image": str(TUMOUR), "model": spleen}}


# --- the measured pipelines (each runs in its own process: ``--worker NAME``) ----------------------------------------


def worker_ours(image_path: str, model: str) -> tuple[np.ndarray, dict]:
    import SimpleITK as sitk

    from cadcore.device import configure_cpu_threads
    from cadcore.io.images import read_volume
    from cadcore.registry.packages import find_model
    from cadcore.segmentation.predict import segment_image

    configure_cpu_threads()
    package = find_model(model)
    started = time.perf_counter()
    image = read_volume(image_path)
    read_s = time.perf_counter() - started
    result = segment_image(image, package, "cpu")
    labels = sitk.GetArrayFromImage(result.labels).transpose(2, 1, 0)
    timings = {**result.timings, "preprocess_s": read_s + result.timings["preprocess_s"]}  # reading included
    return labels, {"total_s": time.perf_counter() - started, "read_s": read_s, **timings}


def worker_reference(image_path: str, model: str) -> tuple[np.ndarray, dict]:
    """cadcore's pipeline before the speed work: SimpleITK resampling (the card's interpolation), fp32 sw_batch_size 2,
    every class's float map resampled, argmax."""
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from cadcore.io.images import read_volume
    from cadcore.preprocessing.input_grid import probabilities_to_input_grid
    from cadcore.preprocessing.resampling import needs_resampling, resample_to_spacing
    from cadcore.preprocessing.working_space import WorkingImage, image_interpolator, normalise, orient
    from cadcore.registry.networks import load_network
    from cadcore.registry.packages import find_model
    from cadcore.segmentation.postprocess import clean_labels

    package = find_model(model)
    card, pre, inference = package.card.raw, package.card.raw["preprocessing"], package.card.raw["inference"]
    started = time.perf_counter()
    image = read_volume(image_path)
    oriented = orient(image, pre.get("orientation"))
    resampled = needs_resampling(oriented, pre.get("spacing"))
    grid = oriented
    if resampled:
        spacing = np.array(pre["spacing"], dtype=float)
        size = np.maximum(1, np.round(np.array(oriented.GetSize()) * np.array(oriented.GetSpacing()) / spacing))
        if image_interpolator(pre) == sitk.sitkLinear:  # MONAI's grid, always SimpleITK (no fast path to compare)
            grid = resample_to_spacing(oriented, pre["spacing"], sitk.sitkLinear)
        else:
            grid = sitk.Resample(oriented, [int(s) for s in size], sitk.Transform(), sitk.sitkBSpline,
                                 oriented.GetOrigin(), spacing.tolist(), oriented.GetDirection(), 0.0,
                                 oriented.GetPixelID())
    array = normalise(sitk.GetArrayFromImage(grid).transpose(2, 1, 0), pre.get("normalization", {}))
    working = WorkingImage(np.ascontiguousarray(array), grid, image, resampled)
    preprocess_s = time.perf_counter() - started
    tick = time.perf_counter()
    network = load_network(package, package.card.main_stage, torch.device("cpu"))
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(working.array)[None, None], inference["patch_size"], 2,
                                          network, inference.get("overlap", 0.5), mode=inference.get("mode"))
        probabilities = torch.softmax(logits[0], 0).numpy()
        network_s = time.perf_counter() - tick
    tick = time.perf_counter()
    labels = clean_labels(probabilities_to_input_grid(probabilities, working).argmax(0).astype(np.uint8),
                          card.get("postprocessing", {}))
    timings = {"preprocess_s": preprocess_s, "network_s": network_s, "postprocess_s": time.perf_counter() - tick}
    return labels, {"total_s": time.perf_counter() - started, **timings}


def worker_baseline(image_path: str, model: str) -> tuple[np.ndarray, dict]:
    """The plain MONAI bundle pipeline (transforms, sliding window with sw_batch_size 4, Invertd, argmax)."""
    import monai.transforms as mt
    import torch
    from monai.inferers import sliding_window_inference

    from cadcore.registry.networks import load_network
    from cadcore.registry.packages import find_model

    package = find_model(model)
    pre, inference = package.card.raw["preprocessing"], package.card.raw["inference"]
    norm = pre["normalization"]
    if norm["kind"] == "ct":
        intensity = [mt.ScaleIntensityRanged("image", *norm["window"], 0.0, 1.0, clip=True)]
    else:  # cadcore's "mr": clip to percentiles, then z-score
        intensity = [mt.ClipIntensityPercentilesd("image", *norm.get("percentiles", [0.5, 99.5])),
                     mt.NormalizeIntensityd("image")]
    preprocessing = mt.Compose([mt.LoadImaged("image", image_only=True), mt.EnsureChannelFirstd("image"),
                                mt.Orientationd("image", axcodes=pre["orientation"]),
                                mt.Spacingd("image", pixdim=pre["spacing"], mode="bilinear"), *intensity,
                                mt.EnsureTyped("image", dtype=torch.float32)])
    postprocessing = mt.Compose([mt.Activationsd("pred", softmax=True),
                                 mt.Invertd("pred", preprocessing, orig_keys="image", nearest_interp=False),
                                 mt.AsDiscreted("pred", argmax=True)])
    started = time.perf_counter()
    data = preprocessing({"image": image_path})
    preprocess_s = time.perf_counter() - started
    tick = time.perf_counter()
    network = load_network(package, package.card.main_stage, torch.device("cpu"))
    with torch.inference_mode():
        data["pred"] = sliding_window_inference(data["image"][None], inference["patch_size"], 4, network,
                                                inference.get("overlap", 0.25), mode=inference.get("mode"))[0]
        network_s = time.perf_counter() - tick
        tick = time.perf_counter()
        labels = postprocessing(data)["pred"][0].numpy().astype(np.uint8)
    timings = {"preprocess_s": preprocess_s, "network_s": network_s, "postprocess_s": time.perf_counter() - tick}
    return labels, {"total_s": time.perf_counter() - started, **timings}


WORKERS = {"ours": worker_ours, "reference": worker_reference, "baseline": worker_baseline}


def run_worker(name: str, case: dict, out: Path, threads: int | None) -> dict:
    arguments = ["--worker", name, "--image", case["image"], "--model", case["model"], "--labels", str(out)]
    return spawn(["path", __file__, *arguments], threads) | json.loads((out.with_suffix(".json")).read_text())


def run_cli(case: dict, out: Path, threads: int | None, fast: bool = False) -> dict:
    result = spawn(["module", "cadcore", "segment", case["image"], "-m", case["model"], "-o", str(out),
                    "--device", "cpu", "--force", *(["--fast"] if fast else [])], threads)
    sidecar = json.loads(Path(f"{out}.json").read_text())
    return result | {"total_s": result["wall_s"], "in_process_s": sidecar["timings"]["total_s"],
                     **{k: v for k, v in sidecar["timings"].items() if k != "total_s"}}


# Peak RSS is the child's own VmHWM, read as it exits: ru_maxrss of a child also counts the parent's memory
# at fork time (Linux carries the high-water mark across exec), which swamps small cases.
BOOT = """import atexit, runpy, sys
def hwm(path):
    with open("/proc/self/status") as status, open(path, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM")))
atexit.register(hwm, sys.argv[1])
kind, target = sys.argv[2:4]
sys.argv = [target, *sys.argv[4:]]
if kind == "path":
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def spawn(target: list[str], threads: int | None) -> dict:
    """Run ``target`` (["path", script, args...] or ["module", name, args...]) in a fresh Python process."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    hwm = CACHE / "scratch" / "vmhwm.txt"
    hwm.unlink(missing_ok=True)
    with open(CACHE / "worker.log", "ab") as log:
        started = time.perf_counter()
        status = subprocess.run([sys.executable, "-c", BOOT, str(hwm), *target], stdout=log, stderr=log, env=env,
                                cwd=REPO).returncode
        wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(target)}; see {CACHE / 'worker.log'}")
    return {"wall_s": wall, "peak_rss_mib": int(hwm.read_text()) / 1024}


def agreement(labels: np.ndarray, reference: np.ndarray) -> dict:
    values = [int(v) for v in np.union1d(np.unique(reference), np.unique(labels)) if v != 0]
    dice = [2.0 * np.count_nonzero((labels == v) & (reference == v))
            / max(1, np.count_nonzero(labels == v) + np.count_nonzero(reference == v)) for v in values]
    return {"identical": float(np.mean(labels == reference)), "dice": float(np.mean(dice)) if dice else 1.0}


# --- main ------------------------------------------------------------------------------------------------------------


def summarise(runs: list[dict], voxels: int) -> dict:
    out: dict = {"n": len(runs), "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs), 1)}
    for key in ("total_s", "wall_s", "read_s", "preprocess_s", "network_s", "postprocess_s", "in_process_s"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = round(statistics.median(values), 3)
            out[key.replace("_s", "_min_s")] = round(min(values), 3)
    out["mvoxels_per_s"] = round(voxels / out["total_s"] / 1e6, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every measured process (default: cad's)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--cases", default="ct,ct_native,hippocampus,tumour")
    parser.add_argument("--bundle", action="store_true", help="add the MONAI bundle rows (benchmarks/bundle_row.py) "
                        "to the cases run with the spleen network")
    parser.add_argument("--ct-size", default="512,512,300", help="the CT cases' size in voxels at 0.8 mm")
    parser.add_argument("--random-ct-weights", action="store_true", help="CT cases with seeded random weights")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--labels", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # imports first, in every pipeline, so in-process timings compare the work alone
        import monai.inferers  # noqa: F401
        import monai.networks.nets  # noqa: F401
        import monai.transforms  # noqa: F401
        import scipy.ndimage  # noqa: F401

        labels, timings = WORKERS[args.worker](args.image, args.model)
        np.save(args.labels, np.ascontiguousarray(labels, dtype=np.uint8))
        args.labels.with_suffix(".json").write_text(json.dumps(timings))
        return

    import SimpleITK as sitk

    sys.path.insert(0, str(REPO / "benchmarks"))  # workers run through runpy, which does not add the script's folder
    import bundle_row as bundle_rows
    from compute_floor import compute_floor, conv_gflops

    all_cases = cases(CACHE, tuple(int(s) for s in args.ct_size.split(",")), args.random_ct_weights)
    scratch = CACHE / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": " ".join(sys.argv), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "threads": args.threads, "repeats": args.repeats,
                    "load_before": os.getloadavg(), "cases": {}}
    gflops = conv_gflops(args.threads)  # first, before the measured processes
    for name in args.cases.split(","):
        case = all_cases[name]
        voxels = int(np.prod(sitk.ReadImage(case["image"]).GetSize()))
        print(f"[{name}] reference", flush=True)
        reference = run_worker("reference", case, scratch / f"{name}_reference.npy", args.threads)
        truth = np.load(scratch / f"{name}_reference.npy")
        runs: dict[str, list[dict]] = {"reference": [reference], "ours": [], "cli": [], "baseline": [], "fast": [],
                                       "bundle": [], "bundle_monai": []}
        agree: dict[str, dict] = {"reference": agreement(truth, truth)}
        has_fast = "fast" in json.loads((Path(case["model"]) / "model.json").read_text()) \
            if Path(case["model"]).is_dir() else False
        pipelines = ("ours", "cli") + (() if args.skip_baseline else ("baseline",)) + (("fast",) if has_fast else ())
        bundle = bundle_rows.build_bundle(CACHE, case["model"]) if args.bundle and name != "hippocampus" else None
        pipelines += ("bundle", "bundle_monai") if bundle else ()
        for repeat in range(args.repeats):
            for pipeline in pipelines:
                print(f"[{name}] {pipeline} {repeat + 1}/{args.repeats}", flush=True)
                if pipeline in ("bundle", "bundle_monai"):
                    runs[pipeline].append(bundle_rows.run_bundle_cli(
                        bundle, case["image"], scratch / f"{name}_{pipeline}.nii.gz", args.threads,
                        pipeline == "bundle_monai", CACHE / "worker.log"))
                    continue
                if pipeline in ("cli", "fast"):
                    runs[pipeline].append(run_cli(case, scratch / f"{name}_{pipeline}.nii.gz", args.threads,
                                                  fast=pipeline == "fast"))
                    continue
                runs[pipeline].append(run_worker(pipeline, case, scratch / f"{name}_{pipeline}.npy", args.threads))
                agree[pipeline] = agreement(np.load(scratch / f"{name}_{pipeline}.npy"), truth)
        for pipeline in ("cli", "fast", "bundle", "bundle_monai"):
            if runs.get(pipeline):
                written = sitk.ReadImage(str(scratch / f"{name}_{pipeline}.nii.gz"))
                agree[pipeline] = agreement(sitk.GetArrayFromImage(written).transpose(2, 1, 0), truth)
        summary = {k: summarise(v, voxels) | agree.get(k, {}) for k, v in runs.items() if v}
        if "baseline" in summary:
            summary["ratio_baseline_over_ours"] = round(summary["baseline"]["total_s"] / summary["ours"]["total_s"], 2)
        if "bundle" in summary:
            summary["bundle_rows"] = bundle_rows.compare(summary, scratch, name, case["image"])
        report["cases"][name] = {"image": case["image"], "model": case["model"], "input_voxels": voxels,
                                 "summary": summary, "runs": runs}
    for name in report["cases"]:
        report["cases"][name]["floor"] = compute_floor(all_cases[name], gflops)
    report["load_after"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)


def print_table(report: dict) -> None:
    print(f"\nload average before {report['load_before'][0]:.2f}, after {report['load_after'][0]:.2f}; "
          f"{report['cores']} cores; medians of {report['repeats']} (min in brackets); total = file -> labels in "
          "memory (cli: the process, imports and writing included; its pre s excludes reading); identical and Dice "
          "vs the fp32 reference")
    for name, case in report["cases"].items():
        floor = case["floor"]
        print(f"\n{name}: {case['input_voxels'] / 1e6:.1f} M input voxels, working {floor['working_shape']}, "
              f"{floor['windows']} windows x {floor['gflop_per_window']:.1f} GFLOP = {floor['tflop']:.2f} TFLOP "
              f"({floor['flop_per_voxel'] / 1e3:.1f} kFLOP/voxel, overlap x{floor['overlap_factor']:.2f}); "
              f"floor {floor['floor_s']:.2f} s at {floor['conv_gflops']:.0f} GFLOP/s")
        print(f"{'pipeline':<10}{'total s':>16}{'pre s':>8}{'net s':>8}{'post s':>8}{'RSS MiB':>9}{'Mvox/s':>8}"
              f"{'identical':>11}{'Dice':>8}")
        for pipeline, row in case["summary"].items():
            if not isinstance(row, dict) or "total_s" not in row:
                continue
            total = f"{row['total_s']:.2f} ({row['total_min_s']:.2f})"
            cells = [f"{row[k]:.2f}" if k in row else "-" for k in ("preprocess_s", "network_s", "postprocess_s")]
            print(f"{pipeline:<10}{total:>16}{cells[0]:>8}{cells[1]:>8}{cells[2]:>8}{row['peak_rss_mib']:>9.0f}"
                  f"{row['mvoxels_per_s']:>8.2f}{row.get('identical', float('nan')):>11.6f}"
                  f"{row.get('dice', float('nan')):>8.4f}")
        if "ratio_baseline_over_ours" in case["summary"]:
            print(f"baseline / ours: {case['summary']['ratio_baseline_over_ours']:.2f}x")
        if "bundle_rows" in case["summary"]:
            print("bundle rows: " + json.dumps(case["summary"]["bundle_rows"]))


if __name__ == "__main__":
    main()
