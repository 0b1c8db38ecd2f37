"""Running a MONAI bundle on one volume: on the engine's own path when its pipeline is recognised, else as MONAI does.

A bundle whose transforms and inferer :mod:`.bundle_translation` recognises runs on the engine's path
(:mod:`.bundle_fast`); only its ``network_def`` is built here. Any other bundle runs with its own preprocessing,
inferer and postprocessing (the rest of this docstring), and says so in one line for the sidecar's ``notes``.

The bundle's ``configs/inference.json`` is read with :class:`monai.bundle.ConfigParser`, and only the items a single
prediction needs are built (``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``), so a bundle segments
as ``python -m monai.bundle run`` would, without the ignite evaluator, the data loader or the file writers: the
evaluator needs ``pytorch-ignite`` and ``SaveImaged`` writes files, while the CLI contract wants nothing written until
every output is ready. The weights go into ``network_def`` from ``torch.load(weights_only=True)`` (see
:meth:`cadcore.registry.bundles.BundleModel.load_state_dict`), never through the config's ``CheckpointLoader``.

Why a temporary NIfTI: the bundle's ``LoadImaged`` expects a file, and we must first read (DICOM, ``.mha``…) and check
the input ourselves; NIfTI is what every bundle reader understands and it carries the full oblique affine.

Geometry: the bundle's ``Invertd`` (when its postprocessing has one) undoes orientation and spacing; then the
prediction, with its own affine, is copied onto the input's grid when the grids agree, or resampled (nearest
neighbour) onto it with SimpleITK, and the grid is asserted, as :mod:`cadcore.preprocessing.working_space` does.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.registry.bundles import CONFIG_FILE, METADATA_FILE, REQUIRED_ITEMS, BundleModel, config_targets
from cadcore.registry.networks import load_weights
from cadcore.segmentation.bundle_translation import MONAI_PATH, Translation, translate

# postprocessing steps that write files: results stay in memory until cad writes every output at once
WRITER_TRANSFORMS = ("SaveImaged", "SaveImage")
GRID_TOLERANCE = 1e-3  # mm and direction cosines; the temporary NIfTI stores the affine in float32
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def missing_package(exc: BaseException, config: Any = None) -> str | None:
    """The top-level package a failure comes from, if it is simply not installed (else None)."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        name = getattr(error, "name", None)
        if isinstance(error, ModuleNotFoundError) and name:
            return str(name).split(".")[0]
        inner = getattr(error, "value", None)  # pydoc.ErrorDuringImport keeps the import error here
        if isinstance(inner, ModuleNotFoundError) and inner.name:
            return inner.name.split(".")[0]
        match = re.search(r"Cannot locate class or function path: '([\w.]+)'", str(error))
        if match and "." in match.group(1):
            top = match.group(1).split(".")[0]
            if importlib.util.find_spec(top) is None:
                return top
        error = error.__cause__ or error.__context__
    for target in config_targets(config):
        top = target.split(".")[0]
        if "." in target and importlib.util.find_spec(top) is None:
            return top
    return None


def _fail(bundle: BundleModel, what: str, exc: BaseException, config: Any = None) -> CadError:
    """One line naming the bundle: the missing package when that is the cause, else the error's first line."""
    package = missing_package(exc, config)
    if package:
        return CadError(f"MONAI bundle {bundle.name!r}: {what} needs the package {package!r}, which is not "
                        f"installed (pip install it into cad's environment)", bundle.folder)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return CadError(f"MONAI bundle {bundle.name!r}: {what} failed ({type(exc).__name__}: "
                    f"{lines[0][:200] if lines else ''})", bundle.folder)


def _parser(bundle: BundleModel, device: Any) -> Any:
    """The bundle's inference config, pointed at the bundle folder and our device, with its file writers removed."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_meta(str(bundle.folder / METADATA_FILE))
        parser.read_config(str(bundle.folder / CONFIG_FILE))
    except Exception as exc:  # JSON errors, unreadable file
        raise CadError(f"cannot parse bundle config ({type(exc).__name__}: {exc})",
                       bundle.folder / CONFIG_FILE) from exc
    missing = [item for item in REQUIRED_ITEMS if item not in parser]
    if missing:
        raise CadError(f"bundle config lacks {', '.join(missing)}", bundle.folder / CONFIG_FILE)
    parser["bundle_root"] = str(bundle.folder)
    parser["device"] = f"$torch.device({str(device)!r})"
    post = parser.get("postprocessing")
    if isinstance(post, dict) and isinstance(post.get("transforms"), list):
        post["transforms"] = [t for t in post["transforms"] if not (
            isinstance(t, dict) and str(t.get("_target_", "")).split(".")[-1] in WRITER_TRANSFORMS)]
        parser["postprocessing"] = post
    return parser


@contextmanager
def _quiet() -> Iterator[None]:
    """MONAI's deprecation notices about the bundle's own arguments are not the user's to act on; keep stderr for
    the progress bar and, on failure, the one-line error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _parsed(parser: Any, bundle: BundleModel, item: str) -> Any:
    try:
        with _quiet():
            return parser.get_parsed_content(item)
    except Exception as exc:
        raise _fail(bundle, f"building {item}", exc, parser.get(item)) from exc


def prediction_image(prediction: Any, fallback_affine: Any) -> sitk.Image:
    """A (C, I, J, K) prediction (probabilities or labels) with its RAS affine → uint8 label image in LPS."""
    import torch

    affine = getattr(prediction, "affine", None)
    affine = fallback_affine if affine is None else affine
    affine = np.asarray(affine.detach().cpu() if isinstance(affine, torch.Tensor) else affine, dtype=float)
    array = prediction.detach().cpu().numpy() if isinstance(prediction, torch.Tensor) else np.asarray(prediction)
    if array.ndim == 3:
        array = array[None]
    labels = array.argmax(0) if array.shape[0] > 1 else np.rint(array[0])
    if labels.min() < 0 or labels.max() > 255:
        raise CadError(f"bundle prediction has label values outside 0..255 ({labels.min()}..{labels.max()})")
    lps = LPS_FROM_RAS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(labels.astype(np.uint8).transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in lps[:3, 3]])
    image.SetDirection([float(v) for v in (lps[:3, :3] / spacing).ravel()])
    return image


def onto_input_grid(labels: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Copy the input's exact geometry when the grids agree (after ``Invertd``), else resample nearest neighbour."""
    from cadcore.io.images import same_grid

    if labels.GetSize() == reference.GetSize() and same_grid(labels, reference, GRID_TOLERANCE):
        labels.CopyInformation(reference)
    else:
        labels = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if not same_grid(labels, reference, 0.0):
        raise CadError(f"internal geometry error: bundle result grid {labels.GetSize()} != input {reference.GetSize()}")
    return labels


def run_bundle(image: sitk.Image, bundle: BundleModel, device: Any, overlap: float | None = None,
               sw_batch_size: int | None = None,
               progress: Callable[[str, float], None] | None = None) -> tuple[sitk.Image, dict[str, float]]:
    """:func:`run_bundle_noted` without its notes (the labelmap on ``image``'s exact grid and the stage timings)."""
    labels, timings, _ = run_bundle_noted(image, bundle, device, overlap, sw_batch_size, progress)
    return labels, timings


def bundle_translation(bundle: BundleModel) -> Translation:
    """How ``cad segment`` will run this bundle: translated onto the engine's path, or through ``monai.bundle``
    (always, when ``$CAD_BUNDLE_PATH`` is ``monai.bundle``: the benchmark's and the tests' way to compare)."""
    if os.environ.get("CAD_BUNDLE_PATH", "") == MONAI_PATH:
        return Translation(None, "CAD_BUNDLE_PATH=monai.bundle asks for it")
    return translate(bundle)


def run_bundle_noted(image: sitk.Image, bundle: BundleModel, device: Any, overlap: float | None = None,
                     sw_batch_size: int | None = None, progress: Callable[[str, float], None] | None = None,
                     translation: Translation | None = None) -> tuple[sitk.Image, dict[str, float], list[str]]:
    """Segment ``image`` with the bundle: on the engine's own path when its pipeline is recognised
    (:mod:`.bundle_translation`), else with its own transforms and inferer through ``monai.bundle``.

    Returns a uint8 labelmap on ``image``'s exact grid, the stage timings, and the notes for the sidecar's
    ``notes`` (one line naming what kept the bundle off the engine's path; none on it).
    """
    import torch

    from cadcore.registry.monai_import import import_monai

    translation = translation or bundle_translation(bundle)
    if translation.plan is not None:  # a fallback bundle's own transforms may want what the lean import leaves out
        import_monai()
    started = time.perf_counter()
    parser = _parser(bundle, device)
    sys.path.insert(0, str(bundle.folder))  # bundles may import their own scripts/ package, as monai.bundle allows
    try:
        if "imports" in parser:
            _parsed(parser, bundle, "imports")
        network = _parsed(parser, bundle, "network_def")
        if not isinstance(network, torch.nn.Module):
            raise CadError(f"bundle network_def is not a torch module ({type(network).__name__})", bundle.folder)
        load_weights(network, bundle.load_state_dict(), bundle.weights_path)
        network = network.to(device).eval()
        if translation.plan is not None:
            from cadcore.segmentation.bundle_fast import run_plan

            labels, timings = run_plan(image, translation.plan, network, device, overlap, sw_batch_size, progress)
            timings["load_s"] = round(time.perf_counter() - started - sum(timings.values()), 3)
            return labels, timings, []
        labels, timings = _run_monai(image, bundle, parser, network, device, overlap, sw_batch_size, progress,
                                     started)
    finally:
        sys.path.remove(str(bundle.folder))
    note = translation.note()
    return labels, timings, [note] if note else []


def _run_monai(image: sitk.Image, bundle: BundleModel, parser: Any, network: Any, device: Any, overlap: float | None,
               sw_batch_size: int | None, progress: Callable[[str, float], None] | None,
               started: float) -> tuple[sitk.Image, dict[str, float]]:
    """The bundle's own preprocessing, inferer and postprocessing (``monai.bundle``), as before translation."""
    timings: dict[str, float] = {}
    preprocessing = _parsed(parser, bundle, "preprocessing")
    inferer = _parsed(parser, bundle, "inferer")
    postprocessing = _parsed(parser, bundle, "postprocessing") if "postprocessing" in parser else None
    if overlap is not None and hasattr(inferer, "overlap"):
        inferer.overlap = overlap
    if sw_batch_size and hasattr(inferer, "sw_batch_size"):
        inferer.sw_batch_size = sw_batch_size
    key = bundle.input_key
    with tempfile.TemporaryDirectory(prefix="cad-bundle-") as tmp:
        source = Path(tmp) / "input.nii.gz"
        sitk.WriteImage(image, str(source), True)
        try:
            with _quiet():
                data = preprocessing({key: str(source)})
        except Exception as exc:
            raise _fail(bundle, "preprocessing", exc, parser.get("preprocessing")) from exc
    timings["preprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress("preprocess", 1.0)

    started = time.perf_counter()
    pred = _infer(bundle, network, inferer, data[key], device, progress)
    timings["network_s"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    data = dict(data)
    data["pred"] = pred
    if postprocessing is not None:
        try:
            with _quiet():
                data = postprocessing(data)
        except Exception as exc:
            raise _fail(bundle, "postprocessing", exc, parser.get("postprocessing")) from exc
    labels = onto_input_grid(prediction_image(data["pred"], data[key].affine), image)
    timings["postprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress("postprocess", 1.0)
    return labels, timings


def _infer(bundle: BundleModel, network: Any, inferer: Any, volume: Any, device: Any,
           progress: Callable[[str, float], None] | None) -> Any:
    """The bundle's inferer on one (C, I, J, K) volume, counting windows for the progress bar; prediction on CPU."""
    import torch

    from cadcore.segmentation.sliding_window import count_windows

    roi = list(getattr(inferer, "roi_size", []) or [])
    batch = int(getattr(inferer, "sw_batch_size", 1) or 1)
    shape = tuple(volume.shape[1:])
    total = max(1, -(-count_windows(shape, roi, float(getattr(inferer, "overlap", 0.0))) // batch)) if roi else 1
    calls = [0]

    def predictor(window: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, enabled=device.type == "cuda"):
            out = network(window)
        calls[0] += 1
        if progress:
            progress("network", calls[0] / total)
        return out.float()

    try:
        with torch.no_grad():  # not inference_mode: Invertd later edits these tensors in place
            pred = inferer(volume[None].to(device), predictor)
    except Exception as exc:
        raise _fail(bundle, "inference", exc) from exc
    return pred[0].detach().cpu()
