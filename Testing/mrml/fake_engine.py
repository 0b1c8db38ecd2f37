"""A stand-in ``cadcore`` package for the glue's tests of ``cad segment --uncertainty`` and ``cad batch``: it speaks
exactly the command lines and output lines of the engine contract (/docs/batch.md, docs/uncertainty.md; the session
contract's interfaces 1 and 2), with a deterministic "model", so the Slicer side is tested against a real process
before (and independently of) the engine's own implementation.

The Logic under test is given ``engineFolder=<folder made here>``: the glue puts that folder first on the child's
PYTHONPATH and runs ``python -m cadcore ...``, so the real argv builder, environment, runner and parsing all run; only
the package behind ``cadcore`` is this fake. What it does on purpose (environment variables of the test):

* ``FAKE_CAD_ARGV=<file>``: write the argv it got (after ``-m cadcore``) there as JSON.
* ``FAKE_CAD_WARNINGS=a|b``: the out-of-distribution guard's sentences: each printed as ``warning: <text>`` on
  stderr and listed in the sidecar's ``warnings``; with ``--strict`` the first is a one-line error, exit 2.
* ``FAKE_CAD_BAD_MAP=1``: the uncertainty map is written one voxel short (not on the input's grid).
* ``FAKE_CAD_CASE_SECONDS=s``: each batch case takes that long (for cancel).
* ``FAKE_CAD_REFUSE=1``: ``cad batch`` refuses its arguments (one line, exit 2, nothing written).
* ``FAKE_CAD_CRASH=1``: ``cad batch`` dies with a traceback (exit 1) after its first case, with no summary line.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import numpy as np
import SimpleITK as sitk

LABELS = [{"value": 1, "name": "anterior", "color": [1.0, 0.5, 0.0]},
          {"value": 2, "name": "posterior", "color": [0.0, 0.5, 1.0]}]

def model_labels(array: np.ndarray) -> np.ndarray:
    """The deterministic "model" (numpy z, y, x): above the mean is label 1 in the low-x half, label 2 in the high-x
    half. Its source is also the fake engine's, so the tests' expectation and the fake cannot drift apart."""
    array = array.astype(np.float32)
    labels = np.zeros(array.shape, np.uint8)
    bright = array > array.mean()
    labels[bright] = 1
    half = array.shape[2] // 2
    labels[..., half:][bright[..., half:]] = 2
    return labels


MAIN = textwrap.dedent('''
    import argparse, csv, json, os, sys, time
    from pathlib import Path

    import numpy as np
    import SimpleITK as sitk

    LABELS = %(labels)r
    DEVICES = ["auto", "cpu", "cuda", "mps"]


    def fail(command, path, message):
        print(f"cad {command}: error: {path}: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2)


    %(model)s

    def labelmap(image):
        result = sitk.GetImageFromArray(model_labels(sitk.GetArrayFromImage(image)))
        result.CopyInformation(image)
        return result


    def uncertainty(image, bad):
        """x / (nx - 1): a float32 map in [0, 1] on the input's grid (one voxel short along x when ``bad``)."""
        size = image.GetSize()
        ramp = np.linspace(0.0, 1.0, size[0], dtype=np.float32)
        array = np.broadcast_to(ramp, (size[2], size[1], size[0])).copy()
        if bad:
            array = array[..., :-1]
        result = sitk.GetImageFromArray(array)
        result.SetSpacing(image.GetSpacing())
        result.SetOrigin(image.GetOrigin())
        result.SetDirection(image.GetDirection())
        return result


    def segment(argv):
        parser = argparse.ArgumentParser(prog="cad segment")
        parser.add_argument("input")
        parser.add_argument("-m", "--model", required=True)
        parser.add_argument("-o", "--output", required=True)
        parser.add_argument("--device", choices=DEVICES, default="auto")
        parser.add_argument("--overlap", type=float)
        parser.add_argument("--no-cascade", action="store_true")
        parser.add_argument("--fast", action="store_true")
        parser.add_argument("--uncertainty")
        parser.add_argument("--strict", action="store_true")
        parser.add_argument("--force", action="store_true")
        args = parser.parse_args(argv)
        warnings = [text for text in os.environ.get("FAKE_CAD_WARNINGS", "").split("|") if text]
        if args.strict and warnings:
            fail("segment", args.input, warnings[0])
        image = sitk.ReadImage(args.input)
        for text in warnings:
            print(f"warning: {text}", file=sys.stderr, flush=True)
        print("segmentation:  50%%|#####     | 1/2", file=sys.stderr, flush=True)
        labels = labelmap(image)
        sitk.WriteImage(labels, args.output)
        sidecar = {"model": Path(args.model).name, "labels": LABELS, "warnings": warnings}
        if args.uncertainty:
            umap = uncertainty(image, os.environ.get("FAKE_CAD_BAD_MAP") == "1")
            sitk.WriteImage(umap, args.uncertainty)
            values, marks = sitk.GetArrayFromImage(umap), sitk.GetArrayFromImage(labels)
            sidecar["uncertainty"] = {
                "file": args.uncertainty, "method": "mirror-tta", "passes": 8, "mean": float(values.mean()),
                "labels": [{"value": l["value"], "name": l["name"],
                            "mean": float(values[marks == l["value"]].mean()) if values.shape == marks.shape
                            and (marks == l["value"]).any() else 0.0} for l in LABELS]}
        Path(args.output + ".json").write_text(json.dumps(sidecar))
        print("segmentation: 100%%|##########| 2/2", file=sys.stderr, flush=True)


    SUFFIXES = (".nii.gz", ".nrrd", ".nii", ".mha")


    def case_id(path):
        name = path.name
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                return name[:-len(suffix)]
        return path.stem


    def batch(argv):
        parser = argparse.ArgumentParser(prog="cad batch")
        parser.add_argument("inputs")
        parser.add_argument("-m", "--model", required=True)
        parser.add_argument("-o", "--output", required=True)
        parser.add_argument("--format", choices=["nii.gz", "nrrd", "seg.nrrd", "dcm"], default="nii.gz")
        parser.add_argument("--workers", type=int, default=1)
        parser.add_argument("--shard")
        parser.add_argument("--resume", action="store_true")
        parser.add_argument("--uncertainty", action="store_true")
        parser.add_argument("--fast", action="store_true")
        parser.add_argument("--device", choices=DEVICES, default="auto")
        parser.add_argument("--force", action="store_true")
        args = parser.parse_args(argv)
        source, out = Path(args.inputs), Path(args.output)
        if args.resume and args.force:
            fail("batch", out, "--resume continues a batch and --force redoes it: give one of them")
        if os.environ.get("FAKE_CAD_REFUSE") == "1":
            fail("batch", source, "no image files or DICOM series found")
        cases = sorted(p for p in source.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        out.mkdir(parents=True, exist_ok=True)
        rows, delay = [], float(os.environ.get("FAKE_CAD_CASE_SECONDS", "0"))
        print("batch:   0%%| 00:00", file=sys.stderr, flush=True)
        for index, path in enumerate(cases):
            time.sleep(delay)
            cid, started = case_id(path), time.monotonic()
            output = out / f"{cid}.{args.format}"
            row = {"id": cid, "input": str(path), "status": "ok", "error": "", "output": str(output),
                   "volume_ml:anterior": "", "volume_ml:posterior": "", "seconds": "", "warnings": ""}
            try:
                image = sitk.ReadImage(str(path))
                if image.GetDimension() != 3:
                    raise ValueError("not a 3D image")
            except Exception as exc:
                error = f"cad segment: error: {path}: " + str(exc).strip().splitlines()[0]
                row.update(status="failed", error=error, output="")
                print(f"case {cid}: failed: {error}", flush=True)
            else:
                labels = labelmap(image)
                sitk.WriteImage(labels, str(output))
                Path(f"{output}.json").write_text(json.dumps({"model": Path(args.model).name, "labels": LABELS,
                                                               "warnings": []}))
                voxel = float(np.prod(image.GetSpacing())) / 1000.0
                marks = sitk.GetArrayFromImage(labels)
                row["volume_ml:anterior"] = f"{(marks == 1).sum() * voxel:.3f}"
                row["volume_ml:posterior"] = f"{(marks == 2).sum() * voxel:.3f}"
                row["seconds"] = f"{time.monotonic() - started:.2f}"
                print(f"case {cid}: ok ({row['seconds']} s)", flush=True)
            rows.append(row)
            if os.environ.get("FAKE_CAD_CRASH") == "1":
                raise RuntimeError("worker died")
            percent = round(100 * (index + 1) / len(cases))
            print(f"batch: {percent:3d}%%| 00:{index + 1:02d}", file=sys.stderr, flush=True)
        summary = out / "summary.csv"
        with summary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["id"])
            writer.writeheader()
            writer.writerows(rows)
        failed = sum(row["status"] == "failed" for row in rows)
        print(f"batch: {len(rows) - failed} ok, {failed} failed, summary {summary}", flush=True)
        raise SystemExit(1 if failed else 0)


    record = os.environ.get("FAKE_CAD_ARGV")
    if record:
        Path(record).write_text(json.dumps(sys.argv[1:]))
    {"segment": segment, "batch": batch}[sys.argv[1]](sys.argv[2:])
''') % {"labels": LABELS, "model": inspect.getsource(model_labels)}


def make_fake_engine(folder: Path) -> Path:
    """``folder/cadcore/__main__.py`` (the fake above); returns ``folder``, to pass as the Logic's engineFolder."""
    package = folder / "cadcore"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(MAIN)
    return folder


def write_case(path: Path, size=(12, 10, 8), spacing=(1.0, 0.8, 1.5), seed: int = 0,
               direction: tuple[float, ...] | None = None) -> sitk.Image:
    """A small random float image (optionally oblique) written to ``path``; returns it."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(rng.normal(100.0, 20.0, size[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0 - seed, 4.0, 2.5))
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return image


def expected_labels(image: sitk.Image) -> np.ndarray:
    """What the fake's "model" gives for ``image`` (numpy z, y, x order)."""
    return model_labels(sitk.GetArrayFromImage(image))
