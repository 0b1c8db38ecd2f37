"""The argv of ``cad batch`` and of ``cad segment --uncertainty/--strict`` (issues 18 and 20): exact lists, values
refused before anything runs, and, once the engine has these options (the engine branches merged), accepted by the
engine's own parser with the meaning intended."""

from __future__ import annotations

from pathlib import Path

import pytest
from CADExtensionLib.command import BATCH_FORMATS, batchArgv, segmentArgv


def test_batch_argv_defaults_exact():
    assert batchArgv("/py", "/data/cohort", "/data/out", "hippocampus-unet") == [
        "/py", "-m", "cadcore", "batch", "/data/cohort", "-m", "hippocampus-unet", "-o", "/data/out",
        "--format", "nii.gz", "--workers", "1", "--device", "auto"]


def test_batch_argv_all_options_exact():
    argv = batchArgv(Path("/opt/Slicer/bin/PythonSlicer"), Path("/d/cases.csv"), Path("/d/out"), Path("/m/tiny"),
                     outputFormat="seg.nrrd", workers=3, shard=(2, 5), resume=True, uncertainty=True, fast=True,
                     device="cuda")
    assert argv == [
        "/opt/Slicer/bin/PythonSlicer", "-m", "cadcore", "batch", "/d/cases.csv", "-m", "/m/tiny", "-o", "/d/out",
        "--format", "seg.nrrd", "--workers", "3", "--shard", "2/5", "--resume", "--uncertainty", "--fast",
        "--device", "cuda"]
    assert batchArgv("py", "in", "out", "m", force=True)[-3:] == ["--device", "auto", "--force"]
    assert all(isinstance(item, str) for item in argv)
    assert BATCH_FORMATS == ("nii.gz", "nrrd", "seg.nrrd", "dcm")  # the contract's formats, in its order
    assert batchArgv("py", "in", "out", "m", outputFormat="dcm", shard=(0, 1))[9:14] == [
        "--format", "dcm", "--workers", "1", "--shard"]


@pytest.mark.parametrize("kwargs", [
    {"outputFormat": "nii"}, {"outputFormat": ".nii.gz"}, {"workers": 0}, {"workers": True}, {"workers": "2"},
    {"workers": 1.5}, {"shard": (3, 3)}, {"shard": (-1, 3)}, {"shard": (1,)}, {"shard": "1/3"}, {"shard": (True, 2)},
    {"device": "gpu"}, {"resume": True, "force": True}])
def test_batch_argv_refuses_bad_values(kwargs):
    with pytest.raises(ValueError):
        batchArgv("py", "in", "out", "m", **kwargs)


def test_segment_argv_with_uncertainty_and_strict_exact():
    assert segmentArgv("/py", "/w/input.nrrd", "/w/segmentation.nrrd", "m", device="cpu", fast=True,
                       uncertaintyPath=Path("/w/uncertainty.nrrd"), strict=True) == [
        "/py", "-m", "cadcore", "segment", "/w/input.nrrd", "-m", "m", "-o", "/w/segmentation.nrrd",
        "--device", "cpu", "--fast", "--uncertainty", "/w/uncertainty.nrrd", "--strict", "--force"]
    for name in ("u.nii.gz", "u.NRRD", "u.mha"):
        assert segmentArgv("py", "i.nrrd", "o.nrrd", "m", uncertaintyPath=name)[-3:] == ["--uncertainty", name,
                                                                                          "--force"]


@pytest.mark.parametrize("path", ["u.png", "u.nii", "u.json", "uncertainty"])
def test_segment_argv_refuses_an_uncertainty_format_the_engine_does_not_write(path):
    with pytest.raises(ValueError, match="uncertainty map must be one of .nii.gz, .nrrd, .mha"):
        segmentArgv("py", "i.nrrd", "o.nrrd", "m", uncertaintyPath=path)


def _parsed(argv: list[str]):
    """The engine's own parser on the argv the Slicer side builds: a drift between the two fails here."""
    from cadcore.cli.parser import build_parser

    return build_parser().parse_args(argv)


def test_batch_argv_is_accepted_by_the_engine_parser():
    argv = batchArgv("py", "cohort", "out", "m", outputFormat="nrrd", workers=2, shard=(1, 3), resume=True,
                     uncertainty=True, fast=True, device="cpu")
    args = _parsed(argv[3:])
    assert args.command == "batch" and args.model == "m" and args.device == "cpu"
    assert (args.format, args.workers, args.resume, args.uncertainty, args.fast, args.force) == (
        "nrrd", 2, True, True, True, False)
    assert _parsed(batchArgv("py", "c", "o", "m", force=True)[3:]).force is True
    assert args.shard == "1/3"  # parsed (and range-checked) by the engine later, as the text the user gave


def test_segment_uncertainty_argv_is_accepted_by_the_engine_parser():
    argv = segmentArgv("py", "in.nrrd", "out.nrrd", "m", uncertaintyPath="u.nrrd", strict=True)
    args = _parsed(argv[3:])
    assert (args.uncertainty, args.strict, args.force) == ("u.nrrd", True, True)
