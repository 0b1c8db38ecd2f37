"""Pure builders for the engine command line and its environment.

Kept free of ``slicer``, ``vtk`` and I/O so the exact argv the Slicer module runs can be unit-tested as a list, and
so the engine contracts (``cad segment INPUT -m MODEL -o OUTPUT ...``, ``cad classify INPUT -m MODEL -o RESULT
...``, ``cad interact INPUT -m MODEL -o MASK --label N ...``, ``cad train --data DATA -o OUTPUT --init MODEL ...``
and ``cad batch INPUTS -m MODEL -o OUT_DIR ...``, docs/cli.md, docs/batch.md) are written down in exactly one place
on the Slicer side.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

ENGINE_MODULE = "cadcore"
"""``python -m cadcore`` runs the ``cad`` command (``cadcore/__main__.py``); no console script needs to be on PATH."""

DEVICES = ("auto", "cpu", "cuda", "mps")

UNCERTAINTY_SUFFIXES = (".nii.gz", ".nrrd", ".mha")
"""What ``cad segment --uncertainty FILE`` writes (a float32 map on the input's grid)."""

BATCH_FORMATS = ("nii.gz", "nrrd", "seg.nrrd", "dcm")
"""``cad batch --format``: one output per case, ``OUT_DIR/<id>.<format>``; ``dcm`` (DICOM SEG) needs DICOM series."""


def segmentArgv(
    python: str | os.PathLike[str],
    inputPath: str | os.PathLike[str],
    outputPath: str | os.PathLike[str],
    model: str | os.PathLike[str],
    device: str = "auto",
    overlap: float | None = None,
    useCascade: bool = True,
    probabilitiesPath: str | os.PathLike[str] | None = None,
    fast: bool = False,
    uncertaintyPath: str | os.PathLike[str] | None = None,
    strict: bool = False,
) -> list[str]:
    """The argv of one ``cad segment`` run.

    ``--force`` is always passed: the output lives in a temporary folder the glue created for this run, so an
    existing file there can only be a leftover of our own, never user data (the engine refuses to overwrite
    without it). ``overlap`` and ``device`` are checked here as well as in the engine so a bad value fails before a
    process is started and the volume is written. ``fast`` asks for the model card's low ``fast`` resolution (the
    engine refuses it for a card without one, so the panel offers it only for such models). ``uncertaintyPath``
    asks for the voxel uncertainty map (``--uncertainty FILE``: normalised entropy in [0, 1] on the input's grid; its
    suffix is checked here, before anything is written); ``strict`` turns the engine's out-of-distribution warning
    into a refusal (``--strict``: exit 2, nothing written).
    """
    _checkDevice(device)
    if uncertaintyPath is not None and not str(uncertaintyPath).lower().endswith(UNCERTAINTY_SUFFIXES):
        raise ValueError(f"{uncertaintyPath}: the uncertainty map must be one of {', '.join(UNCERTAINTY_SUFFIXES)}")
    argv = [str(python), "-m", ENGINE_MODULE, "segment", str(inputPath), "-m", str(model), "-o", str(outputPath),
            "--device", device]
    if overlap is not None:
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        argv += ["--overlap", str(float(overlap))]
    if not useCascade:
        argv.append("--no-cascade")
    if probabilitiesPath is not None:
        argv += ["--probabilities", str(probabilitiesPath)]
    if fast:
        argv.append("--fast")
    if uncertaintyPath is not None:
        argv += ["--uncertainty", str(uncertaintyPath)]
    if strict:
        argv.append("--strict")
    argv.append("--force")
    return argv


def batchArgv(
    python: str | os.PathLike[str],
    inputPath: str | os.PathLike[str],
    outputFolder: str | os.PathLike[str],
    model: str | os.PathLike[str],
    outputFormat: str = "nii.gz",
    workers: int = 1,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    uncertainty: bool = False,
    fast: bool = False,
    device: str = "auto",
    force: bool = False,
) -> list[str]:
    """The argv of one ``cad batch`` run: ``cad batch INPUTS -m MODEL -o OUT_DIR --format F --workers N ...``.

    ``inputPath`` is a folder (image files and DICOM series, found recursively), a CSV or a ``dataset.json``; the
    outputs go to the user's ``outputFolder`` (``<id>.<format>`` + sidecar per case, ``summary.csv``). Unlike the
    single-case commands, ``--force`` is *not* implied: the folder is the user's, so replacing what is there is their
    choice (``force``), as is skipping the cases already done (``resume``; not both, as the engine says).
    ``--format`` and ``--workers`` are always
    written, so the run does not depend on the engine's defaults. ``shard`` is ``(K, N)``, K counted from 0. Values
    are checked here so a bad one fails before a volume is exported or a process started.
    """
    _checkDevice(device)
    if outputFormat not in BATCH_FORMATS:
        raise ValueError(f"unknown output format {outputFormat!r} (use one of {', '.join(BATCH_FORMATS)})")
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    if resume and force:
        raise ValueError("resume continues a batch and force redoes it: give one of them")
    argv = [str(python), "-m", ENGINE_MODULE, "batch", str(inputPath), "-m", str(model), "-o", str(outputFolder),
            "--format", outputFormat, "--workers", str(int(workers))]
    if shard is not None:
        try:
            index, count = shard
        except (TypeError, ValueError) as exc:
            raise ValueError(f"shard must be (K, N), got {shard!r}") from exc
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (index, count)) or not (
                0 <= index < count):
            raise ValueError(f"shard must be (K, N) with 0 <= K < N, got {shard!r}")
        argv += ["--shard", f"{int(index)}/{int(count)}"]
    for flag, wanted in (("--resume", resume), ("--uncertainty", uncertainty), ("--fast", fast)):
        if wanted:
            argv.append(flag)
    argv += ["--device", device]
    if force:
        argv.append("--force")
    return argv


def trainArgv(
    python: str | os.PathLike[str],
    dataPath: str | os.PathLike[str],
    outputPath: str | os.PathLike[str],
    initModel: str | os.PathLike[str],
    modelId: str,
    epochs: int = 50,
    device: str = "auto",
    labelsPath: str | os.PathLike[str] | None = None,
    freezeEncoderEpochs: int = 0,
    spacing: Sequence[float] | None = None,
    patchSize: Sequence[int] | None = None,
    modality: str | None = None,
    valEvery: int | None = None,
    description: str | None = None,
    cascadeMarginMm: float | None = None,
) -> list[str]:
    """The argv of one fine-tuning run: ``cad train --data DATA -o OUTPUT --init MODEL --id NEW_ID ...``.

    ``cascadeMarginMm`` (the parent is a coarse-to-fine cascade): ``--cascade --roi-margin MM``, so both stages are
    fine-tuned from the parent's and the new model is a cascade with the parent's ROI margin.

    The parent's working resolution (``spacing``), window (``patchSize``) and intensity normalisation
    (``modality``) are passed explicitly because ``cad train`` does not take them from ``--init``: left out, it
    would fine-tune at the training images' median spacing with MR normalisation, which silently changes what the
    network sees. ``labelsPath`` (a JSON list of the parent's labels) keeps names, colours and terminology in the
    new card. ``--force`` is not passed: the output is a fresh folder of the run's own workspace. Values are checked
    here so a bad one fails before any volume is exported; lists are written as one ``--opt=a,b,c`` token, as the
    engine parses them.
    """
    _checkDevice(device)
    for name, value, low in (("epochs", epochs, 1), ("freezeEncoderEpochs", freezeEncoderEpochs, 0),
                             ("valEvery", 1 if valEvery is None else valEvery, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not str(modelId).strip():
        raise ValueError("the new model needs an id")
    argv = [str(python), "-m", ENGINE_MODULE, "train", "--data", str(dataPath), "-o", str(outputPath),
            "--init", str(initModel), "--id", str(modelId), "--epochs", str(int(epochs)), "--device", device]
    if valEvery is not None:
        argv += ["--val-every", str(int(valEvery))]
    if labelsPath is not None:
        argv += ["--labels", str(labelsPath)]
    if freezeEncoderEpochs:
        argv += ["--freeze-encoder-epochs", str(int(freezeEncoderEpochs))]
    if spacing is not None:
        argv.append("--spacing=" + ",".join(map(repr, _numbers(spacing, "spacing", (3,), positive=True))))
    if patchSize is not None:
        sizes = _numbers(patchSize, "patchSize", (3,), positive=True)
        if not all(size.is_integer() for size in sizes):
            raise ValueError(f"patchSize must be whole voxel counts, got {patchSize!r}")
        argv.append("--patch-size=" + ",".join(str(int(size)) for size in sizes))
    if modality is not None:
        if str(modality).upper() not in ("MR", "CT", "ANY"):
            raise ValueError(f"modality must be MR, CT or ANY (mixed data), got {modality!r}")
        argv += ["--modality", str(modality).upper()]
    if cascadeMarginMm is not None:
        margin = _numbers(cascadeMarginMm, "cascadeMarginMm", (1,))[0]
        if margin < 0:
            raise ValueError(f"cascadeMarginMm must be >= 0 mm, got {cascadeMarginMm!r}")
        argv += ["--cascade", "--roi-margin", repr(margin)]
    if description:
        argv.append(f"--description={description}")  # one token: a text starting with "-" is not an option
    return argv


def _numbers(values, what: str, count: tuple[int, ...], positive: bool = False) -> list[float]:
    """``values`` (one number or a sequence) as finite floats, checked for length and sign."""
    if isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{what} must be numbers, not the text {values!r}")
    try:
        values = list(values)
        result = [float(v) for v in values if not isinstance(v, bool)]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numbers, got {values!r}") from exc
    if len(result) != len(values) or len(result) not in count:
        raise ValueError(f"{what} needs {' or '.join(map(str, count))} numbers, got {values!r}")
    if not all(math.isfinite(v) for v in result) or (positive and not all(v > 0 for v in result)):
        raise ValueError(f"{what} must be finite{' and positive' if positive else ''}, got {values!r}")
    return result


def classifyArgv(
    python: str | os.PathLike[str],
    inputPath: str | os.PathLike[str],
    resultPath: str | os.PathLike[str],
    model: str | os.PathLike[str],
    device: str = "auto",
    maskPath: str | os.PathLike[str] | None = None,
    label: int | None = None,
    centerRAS: Sequence[float] | None = None,
    sizeMM: float | Sequence[float] | None = None,
    heatmapPath: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The argv of one ``cad classify`` run.

    The lesion is given either as a mask (``maskPath`` on the input's grid, optionally with its ``label`` value) or
    as a point (``centerRAS``, in the RAS millimetres of the input file, optionally with a box ``sizeMM``: one edge
    or three); with neither the whole volume is classified. Mixing them, a ``label`` without a mask or a size without
    a point is refused here, before a volume is written or a process started. ``--force`` is always passed, as for
    :func:`segmentArgv`: the outputs live in the run's own temporary folder. Numbers are written with ``repr`` so a
    point survives the trip through text exactly, and as ``--center=...`` so a negative first coordinate is not
    mistaken for an option.
    """
    _checkDevice(device)
    if maskPath is not None and centerRAS is not None:
        raise ValueError("give either a mask (maskPath/label) or a point (centerRAS/sizeMM), not both")
    if label is not None and maskPath is None:
        raise ValueError("label needs maskPath")
    if sizeMM is not None and centerRAS is None:
        raise ValueError("sizeMM needs centerRAS")
    argv = [str(python), "-m", ENGINE_MODULE, "classify", str(inputPath), "-m", str(model), "-o", str(resultPath),
            "--device", device]
    if maskPath is not None:
        argv += ["--mask", str(maskPath)]
        if label is not None:
            argv += ["--label", _positiveLabel(label)]
    if centerRAS is not None:
        # "--center=X,Y,Z" in one token: argparse takes a separate "-3.5,2,1" for an option and refuses it
        argv.append("--center=" + ",".join(map(repr, _numbers(centerRAS, "centerRAS", (3,)))))
        if sizeMM is not None:
            argv.append("--size=" + ",".join(map(repr, _numbers(sizeMM, "sizeMM", (1, 3), positive=True))))
    if heatmapPath is not None:
        argv += ["--heatmap", str(heatmapPath)]
    argv.append("--force")
    return argv


def interactArgv(
    python: str | os.PathLike[str],
    inputPath: str | os.PathLike[str],
    outputPath: str | os.PathLike[str],
    model: str | os.PathLike[str],
    label: int,
    positive: Sequence[Sequence[float]] = (),
    negative: Sequence[Sequence[float]] = (),
    box: Sequence[float] | None = None,
    scribblePath: str | os.PathLike[str] | None = None,
    previousPath: str | os.PathLike[str] | None = None,
    uncertaintyPath: str | os.PathLike[str] | None = None,
    device: str = "auto",
) -> list[str]:
    """The argv of one ``cad interact`` prompt: ``cad interact INPUT -m MODEL -o OUTPUT --label N --click=+R,A,S ...``.

    Points and the box are RAS millimetres *of the input file* (the caller converts world points into the volume's
    local frame). Each click is one ``--click=+R,A,S`` / ``--click=-R,A,S`` token and the box one ``--box=...`` token,
    so a negative first coordinate is not taken for an option; numbers are written with ``repr`` so they survive the
    trip through text exactly. Whether the prompt holds anything positive is left to the engine, which says so in its
    one-line error. ``--force`` is always passed, as for :func:`segmentArgv`: the outputs live in the prompt's own
    temporary folder.
    """
    _checkDevice(device)
    argv = [str(python), "-m", ENGINE_MODULE, "interact", str(inputPath), "-m", str(model), "-o", str(outputPath),
            "--label", _positiveLabel(label)]
    for sign, points in (("+", positive), ("-", negative)):
        for point in points:
            argv.append(f"--click={sign}" + ",".join(map(repr, _numbers(point, "a click", (3,)))))
    if box is not None:
        argv.append("--box=" + ",".join(map(repr, _numbers(box, "box", (6,)))))
    for option, path in (("--scribble", scribblePath), ("--previous", previousPath),
                         ("--uncertainty", uncertaintyPath)):
        if path is not None:
            argv += [option, str(path)]
    argv += ["--device", device, "--force"]
    return argv


def _checkDevice(device: str) -> None:
    """Checked here as well as in the engine, so a bad value fails before a volume is written or a process started."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r} (use one of {', '.join(DEVICES)})")


def _positiveLabel(label: int) -> str:
    """``--label``'s text: a positive integer that fits the engine's labelmaps (a bool is not a label)."""
    if isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 < int(label) < 2**31:
        raise ValueError(f"label must be a positive integer, got {label!r}")
    return str(int(label))


def engineFolder() -> Path:
    """The folder that holds ``cadcore``: the CADExtension module folder, parent of this package."""
    return Path(__file__).resolve().parents[1]


def engineEnvironment(cadExtensionFolder: str | os.PathLike[str], existingPythonPath: str | None = None,
                      ) -> dict[str, str]:
    """Environment *additions* for the engine process (the runner lays them over the current environment).

    * ``PYTHONPATH`` starts with ``cadExtensionFolder`` so ``python -m cadcore`` finds the engine shipped inside the
      extension (Slicer puts module folders on ``sys.path`` of its own interpreter, not on a child's). Pass the
      current ``PYTHONPATH`` as ``existingPythonPath`` to keep it after ours.
    * ``PYTHONUNBUFFERED`` so each log line and tqdm redraw reaches the progress parser when written, not at exit.
    * ``PYTHONIOENCODING`` so an error message naming a non-ASCII path decodes the same on every platform.
    """
    entries: Sequence[str] = [str(Path(cadExtensionFolder))]
    if existingPythonPath:
        entries = [*entries, *(p for p in existingPythonPath.split(os.pathsep) if p and p != entries[0])]
    return {"PYTHONPATH": os.pathsep.join(entries), "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"}
