"""Interactive segmentation with simulated clicks (issue 15, item 8): Dice after each click, warm and cold latency.

Protocol (as SEGFM3D-style evaluations): click 1 at the deepest point (largest distance to the border, in mm) of the
target's largest component; then up to K-1 corrective clicks, each at the deepest point of the largest error
component (``+`` for a missed region, ``-`` for a false one), each prompt given every click so far and the previous
mask. Methods, each run with its own click sequence:

* ``automatic``: ``cad segment``'s pipeline (no prompt; the same Dice at every click);
* ``model on the region``: :class:`cadcore.segmentation.interactive.InteractiveSession` (the plain model on the
  prompts' region, components under positive clicks kept, under negative ones removed); warm latency per prompt;
* ``6 mm ball``: a 6 mm ball around each positive click, minus one around each negative click (the trivial baseline).

Cases never trained on: ``--split val`` takes the cases the model card lists as held out of ``--data``; ``--pair
IMAGE MASK`` adds one case (e.g. the tumour model's native scans of patients it never saw). ``--cold N`` also times N
``cad interact`` processes (the first click), the cost of a prompt without a warm engine. ``--pairs FILE`` adds the
pairs of a JSON list of ``{"image", "mask", "structure"}`` (paths relative to the file; masks 0/1, so ``--labels 1``),
e.g. ``prompt3d_data.py``'s ``eval_pairs.json``, and summarises per structure as well.

    .venv/bin/python benchmarks/interactive.py --model hippocampus-unet --data ../shared/data/msd_task04_hippocampus \\
        --split val --json benchmarks/results/interactive_hippocampus.json --cold 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from cadcore.evaluation.metrics import dice
from cadcore.io.datasets import load_dataset
from cadcore.io.images import read_image, read_volume
from cadcore.registry.packages import find_model
from cadcore.segmentation.interactive import CONNECTIVITY, InteractiveSession, Prompts
from cadcore.segmentation.predict import segment_image

REPO = Path(__file__).resolve().parents[1]


def to_kji(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


def deepest_ras(region: np.ndarray, image: sitk.Image) -> tuple[float, float, float]:
    """RAS mm of the voxel of ``region`` (K, J, I) farthest from its border."""
    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=image.GetSpacing()[::-1])[1:-1, 1:-1, 1:-1]
    k, j, i = np.unravel_index(int(np.argmax(distance)), distance.shape)
    x, y, z = image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])
    return -x, -y, z


def largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask, structure=CONNECTIVITY)
    if count == 0:
        return mask
    return components == 1 + int(np.argmax(np.bincount(components.ravel())[1:]))


def next_click(prediction: np.ndarray, truth: np.ndarray, image: sitk.Image) -> tuple[str, tuple] | None:
    """The corrective click: the largest error component, + where the target was missed, - where it was not."""
    best = None
    for sign, error in (("+", truth & ~prediction), ("-", prediction & ~truth)):
        if error.any():
            component = largest_component(error)
            if best is None or component.sum() > best[1].sum():
                best = (sign, component)
    return None if best is None else (best[0], deepest_ras(best[1], image))


def ball(image: sitk.Image, clicks: list[tuple[str, tuple]], radius_mm: float = 6.0) -> np.ndarray:
    """Union of balls around the positive clicks, minus balls around the negative ones, in voxel-index space scaled
    by the spacing (exact for axis-aligned volumes, which these are)."""
    spacing, shape = np.array(image.GetSpacing()), to_kji(image).shape
    mask = np.zeros(shape, bool)
    for sign, ras in clicks:
        centre = np.array(image.TransformPhysicalPointToContinuousIndex((-ras[0], -ras[1], ras[2])))[::-1]
        grids = np.ogrid[tuple(slice(0, n) for n in shape)]
        inside = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing[::-1])) <= radius_mm ** 2
        mask = (mask | inside) if sign == "+" else (mask & ~inside)
    return mask


def run_case(image_path: Path, mask_path: Path, package, label: int, n_clicks: int) -> dict:
    """One target (``label`` of the data) of one case. A guided model (card section ``interactive``) answers its
    label 1, "the prompted structure", for any target, and has no automatic mode."""
    image, truth_image = read_volume(image_path), read_image(mask_path)
    truth = to_kji(truth_image) == label
    if not truth.any():
        return {}
    guided = package.card.interactive is not None
    model_label = 1 if guided else label
    automatic = None if guided else to_kji(segment_image(image, package, "cpu").labels) == label
    row: dict = {"case": image_path.name, "label": label,
                 "automatic": None if automatic is None else round(dice(automatic, truth), 4)}
    session = InteractiveSession(package, image, "cpu")
    for method in ("model on the region", "6 mm ball"):
        clicks = [("+", deepest_ras(largest_component(truth), image))]
        previous, scores, seconds = None, [], []
        for _ in range(n_clicks):
            started = time.perf_counter()
            if method == "6 mm ball":
                prediction = ball(image, clicks)
            else:
                prompts = Prompts(tuple(c for s, c in clicks if s == "+"), tuple(c for s, c in clicks if s == "-"),
                                  previous=previous)
                result = session.segment(prompts, model_label)
                previous = result.mask
                prediction = to_kji(result.mask) > 0
            seconds.append(time.perf_counter() - started)
            scores.append(round(dice(prediction, truth), 4))
            correction = next_click(prediction, truth, image)
            if correction is None:
                scores += [scores[-1]] * (n_clicks - len(scores))
                break
            clicks.append(correction)
        row[method] = {"dice": scores, "seconds": [round(s, 3) for s in seconds]}
    return row


def cold_prompt(image_path: Path, mask_path: Path, model: str, label: int, model_label: int) -> float:
    """Wall time of one ``cad interact`` process (the first click): start-up, imports, reading, network, writing."""
    truth_image = read_image(mask_path)
    click = deepest_ras(largest_component(to_kji(truth_image) == label), truth_image)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cadcore", "interact", str(image_path), "-m", model, "-o",
                        str(Path(folder) / "mask.nii.gz"), "--label", str(model_label), "--device", "cpu",
                        f"--click=+{click[0]},{click[1]},{click[2]}"], check=True, capture_output=True)
        return time.perf_counter() - started


def summary(rows: list[dict], labels: list[int], n_clicks: int) -> dict:
    out: dict = {}
    for label in labels:
        mine = [r for r in rows if r.get("label") == label]
        if not mine:
            continue
        automatic = [r["automatic"] for r in mine if r["automatic"] is not None]
        entry = {"n_cases": len(mine), "automatic": round(float(np.mean(automatic)), 4) if automatic else None}
        for method in ("model on the region", "6 mm ball"):
            entry[method] = [round(float(np.mean([r[method]["dice"][k] for r in mine])), 4) for k in range(n_clicks)]
        entry["warm_prompt_seconds_median"] = round(statistics.median(
            s for r in mine for s in r["model on the region"]["seconds"]), 3)
        entry["first_prompt_seconds_median"] = round(statistics.median(
            r["model on the region"]["seconds"][0] for r in mine), 3)
        out[str(label)] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, default=None, help="dataset.json or images/labels folder")
    parser.add_argument("--split", default="val", choices=["val", "all"])
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("IMAGE", "MASK"))
    parser.add_argument("--pairs", type=Path, default=None, help="JSON list of {image, mask, structure}")
    parser.add_argument("--labels", type=lambda t: [int(v) for v in t.split(",")], default=None)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--max-cases", type=int, default=None)
    parser.add_argument("--cold", type=int, default=0, help="time this many cad interact processes")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    package = find_model(args.model)
    pairs = [(Path(i), Path(m)) for i, m in args.pair]
    structure_of: dict[Path, str] = {}
    if args.pairs:
        for entry in json.loads(args.pairs.read_text()):
            image, mask = args.pairs.parent / entry["image"], args.pairs.parent / entry["mask"]
            pairs.append((image, mask))
            structure_of[mask] = entry.get("structure", "")
    if args.data:
        dataset = load_dataset(args.data)
        cases = dataset.cases + (dataset.validation or [])
        held_out = set(package.card.validation_ids)
        pairs += [(c.image, c.label) for c in cases if args.split == "all" or c.id in held_out]
    pairs = pairs[: args.max_cases] if args.max_cases else pairs
    labels = args.labels or sorted(package.label_names())  # a guided model: pass the data's labels (--labels 1,2)
    rows = []
    for index, (image_path, mask_path) in enumerate(pairs):
        for label in labels:
            row = run_case(image_path, mask_path, package, label, args.clicks)
            if row:
                row.update({"structure": structure_of[mask_path]} if mask_path in structure_of else {})
                rows.append(row)
                print(f"[{index + 1}/{len(pairs)}] {image_path.name} label {label}: automatic {row['automatic']}"
                      f"  region {row['model on the region']['dice']}  ball {row['6 mm ball']['dice']}", flush=True)
    report = {"model": args.model, "model_version": package.version, "split": args.split, "clicks": args.clicks,
              "n_pairs": len(pairs), "summary": summary(rows, labels, args.clicks), "cases": rows,
              "by_structure": {name: summary([r for r in rows if r.get("structure") == name], labels, args.clicks)
                               for name in sorted(set(structure_of.values()))},
              "command": "benchmarks/interactive.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.cold:
        model_label = 1 if package.card.interactive is not None else labels[0]
        report["cold_prompt_seconds"] = [round(cold_prompt(i, m, args.model, labels[0], model_label), 2)
                                         for i, m in pairs[: args.cold]]
    print(json.dumps(report["by_structure"] or report["summary"], indent=1))
    if args.cold:
        print("cold prompts (s):", report["cold_prompt_seconds"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
