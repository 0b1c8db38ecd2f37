"""The engine command line, progress parsing and line splitting: exact, pure, no process started."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest
from CADExtensionLib.command import classifyArgv, engineEnvironment, engineFolder, segmentArgv
from CADExtensionLib.process import LineSplitter, parseProgress
from CADSegmentLib.SegmentationLogic import engineErrorLine
from tqdm import tqdm


def test_segment_argv_defaults_exact():
    assert segmentArgv("/py", "/tmp/w/input.nrrd", "/tmp/w/segmentation.nrrd", "hippocampus-unet") == [
        "/py", "-m", "cadcore", "segment", "/tmp/w/input.nrrd", "-m", "hippocampus-unet",
        "-o", "/tmp/w/segmentation.nrrd", "--device", "auto", "--force",
    ]


def test_segment_argv_all_options_exact():
    argv = segmentArgv(Path("/opt/Slicer/bin/PythonSlicer"), Path("/t/in.nrrd"), Path("/t/out.nrrd"), Path("/m/tiny"),
                       device="cpu", overlap=0.625, useCascade=False, probabilitiesPath=Path("/t/p.nrrd"))
    assert argv == [
        "/opt/Slicer/bin/PythonSlicer", "-m", "cadcore", "segment", "/t/in.nrrd", "-m", "/m/tiny",
        "-o", "/t/out.nrrd", "--device", "cpu", "--overlap", "0.625", "--no-cascade",
        "--probabilities", "/t/p.nrrd", "--force",
    ]
    assert all(isinstance(item, str) for item in argv)


def test_segment_argv_is_accepted_by_the_engine_parser():
    """The list is not only what we think: the engine's own argparse accepts it with the meaning we intend."""
    from cadcore.cli.parser import build_parser

    argv = segmentArgv("py", "in.nrrd", "out.nrrd", "m", device="cpu", overlap=0.5, useCascade=False,
                       probabilitiesPath="p.nrrd")
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.input, args.model, args.output, args.device) == ("segment", "in.nrrd", "m", "out.nrrd",
                                                                                 "cpu")
    assert (args.overlap, args.no_cascade, args.probabilities, args.force) == (0.5, True, "p.nrrd", True)


@pytest.mark.parametrize("kwargs", [{"device": "gpu"}, {"overlap": 1.0}, {"overlap": -0.1}])
def test_segment_argv_refuses_bad_values_before_anything_runs(kwargs):
    with pytest.raises(ValueError):
        segmentArgv("py", "in.nrrd", "out.nrrd", "m", **kwargs)


def test_classify_argv_with_a_mask_exact():
    assert classifyArgv("/py", "/w/input.nrrd", "/w/result.json", "tiny-resnet", device="cpu", maskPath="/w/mask.nrrd",
                        label=1, heatmapPath="/w/heatmap.nrrd") == [
        "/py", "-m", "cadcore", "classify", "/w/input.nrrd", "-m", "tiny-resnet", "-o", "/w/result.json",
        "--device", "cpu", "--mask", "/w/mask.nrrd", "--label", "1", "--heatmap", "/w/heatmap.nrrd", "--force",
    ]


def test_classify_argv_with_a_point_and_whole_volume_exact():
    assert classifyArgv(Path("/py"), Path("/w/in.nrrd"), Path("/w/r.json"), Path("/m/tiny"),
                        centerRAS=(-12.5, 0.1, 3), sizeMM=[20, 30.5, 40]) == [
        "/py", "-m", "cadcore", "classify", "/w/in.nrrd", "-m", "/m/tiny", "-o", "/w/r.json", "--device", "auto",
        "--center=-12.5,0.1,3.0", "--size=20.0,30.5,40.0", "--force",
    ]
    assert classifyArgv("py", "in.nrrd", "r.json", "m", centerRAS=[1, 2, 3], sizeMM=25)[-2] == "--size=25.0"
    assert classifyArgv("py", "in.nrrd", "r.json", "m") == [
        "py", "-m", "cadcore", "classify", "in.nrrd", "-m", "m", "-o", "r.json", "--device", "auto", "--force"]


def test_classify_argv_is_accepted_by_the_engine_parser_with_exact_numbers():
    """Including a negative first coordinate, which argparse would take for an option as a separate token."""
    from cadcore.cli.classify import _triple
    from cadcore.cli.parser import build_parser

    centre = (-0.1 + 0.2 - 41.3, 1e-7, 2.0 / 3.0)
    argv = classifyArgv("py", "in.nrrd", "r.json", "m", device="cuda", centerRAS=centre, sizeMM=(10, 20.25, 30),
                        heatmapPath="h.nrrd")
    args = build_parser().parse_args(argv[3:])
    assert (args.command, args.input, args.model, args.output, args.device, args.heatmap, args.force) == (
        "classify", "in.nrrd", "m", "r.json", "cuda", "h.nrrd", True)
    assert _triple(args.center, "--center") == list(centre)  # bit for bit through the text
    assert _triple(args.size, "--size") == [10.0, 20.25, 30.0]
    args = build_parser().parse_args(classifyArgv("py", "in.nrrd", "r.json", "m", maskPath="k.nrrd", label=3)[3:])
    assert (args.mask, args.label, args.center, args.heatmap) == ("k.nrrd", 3, None, None)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"device": "gpu"}, "unknown device"),
    ({"maskPath": "k.nrrd", "centerRAS": (0, 0, 0)}, "not both"),
    ({"label": 1}, "label needs maskPath"),
    ({"sizeMM": 10}, "sizeMM needs centerRAS"),
    ({"maskPath": "k.nrrd", "label": 0}, "positive integer"),
    ({"maskPath": "k.nrrd", "label": True}, "positive integer"),
    ({"maskPath": "k.nrrd", "label": 1.5}, "positive integer"),
    ({"centerRAS": (0, 0)}, "3 numbers"),
    ({"centerRAS": "1,2,3"}, "not the text"),
    ({"centerRAS": (0, float("nan"), 0)}, "finite"),
    ({"centerRAS": (0, 0, True)}, "3 numbers"),
    ({"centerRAS": (0, 0, 0), "sizeMM": (1, 2)}, "1 or 3 numbers"),
    ({"centerRAS": (0, 0, 0), "sizeMM": 0}, "positive"),
    ({"centerRAS": (0, 0, 0), "sizeMM": float("inf")}, "finite"),
])
def test_classify_argv_refuses_bad_combinations_before_anything_runs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        classifyArgv("py", "in.nrrd", "r.json", "m", **kwargs)


def test_engine_environment_puts_the_engine_folder_first(tmp_path):
    env = engineEnvironment(tmp_path, os.pathsep.join(["/a", str(tmp_path), "/b"]))
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/a", "/b"]
    assert env["PYTHONUNBUFFERED"] == "1"
    assert engineEnvironment(tmp_path)["PYTHONPATH"] == str(tmp_path)
    assert (engineFolder() / "cadcore" / "__main__.py").is_file()


def _tqdm_lines(**options) -> list[str]:
    stream = io.StringIO()
    bar = tqdm(total=100, file=stream, mininterval=0, miniters=1, **options)
    for step in (7, 38, 55):
        bar.update(step)
    bar.close()
    return LineSplitter().feed(stream.getvalue())


def test_parse_progress_on_real_tqdm_output():
    lines = _tqdm_lines(desc="network")
    assert [parseProgress(line) for line in lines] == [0, 7, 45, 100, 100]
    assert lines[2].startswith("network:  45%|")


def test_parse_progress_on_the_engines_own_bar():
    """cadcore's StagedProgress (custom bar_format, stage names as descriptions), captured as the glue sees it."""
    from cadcore.progress import StagedProgress

    stream = io.StringIO()
    with contextlib.redirect_stderr(stream):
        progress = StagedProgress({"preprocess": 1, "network": 8, "postprocess": 1})
        progress.bar.mininterval = 0
        progress.update("preprocess", 1.0)
        progress.update("network", 0.5)
        progress.close()
    values = [parseProgress(line) for line in LineSplitter().feed(stream.getvalue())]
    assert values[0] == 0 and values[-1] == 100
    assert 50 in values  # preprocess 10 % + half of network's 80 %
    assert values == sorted(values)


@pytest.mark.parametrize("line", [
    "segmentation: /tmp/out.nrrd",
    "  1  Anterior hippocampus     1.234 mL",
    "cad segment: error: /tmp/in.nrrd: 45% of voxels are NaN",
    "accuracy 95%",
    "150%|####|",
    "",
])
def test_parse_progress_ignores_other_lines(line):
    assert parseProgress(line) is None


def test_line_splitter_handles_carriage_returns_across_chunks():
    splitter = LineSplitter()
    chunks = ["first li", "ne\r\n", "\r 10%|#", "  |\r 20%|##  |\r", "\n", "last"]
    lines = [line for chunk in chunks for line in splitter.feed(chunk)] + splitter.flush()
    assert lines == ["first line", " 10%|#  |", " 20%|##  |", "last"]


def test_engine_error_line_prefers_the_one_line_contract():
    lines = ["network: 40%|####", "cad segment: error: /x/in.nrrd: cannot read image", "Traceback? no"]
    assert engineErrorLine(lines, 2) == "cad segment: error: /x/in.nrrd: cannot read image"
    assert engineErrorLine(["Traceback (most recent call last):", "  File 'x'", "MemoryError"], 1) == "MemoryError"
    assert engineErrorLine(["  5%|#"], -9) == "engine exited with code -9"
