"""One line on stderr (issue 14, item 6, the CLI half): progress redraws only on a terminal and is otherwise whole
lines that the Slicer module's own parser (``CADExtensionLib/process.py``) reads to the right percentage; no bar
before an argument error; no MONAI FutureWarning; a closed stdout pipe is not a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
from cli_checks import LineSplitter, engine_command, engine_env, messages, one_message, parseProgress, write_volume

from cadcore.cli import main
from cadcore.progress import StagedProgress

STAGES = {"preprocess": 1, "network": 8, "postprocess": 1, "write": 0.5}


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def new_lines(stream: io.StringIO, seen: list[str]) -> list[str]:
    lines = stream.getvalue().splitlines()
    fresh = lines[len(seen):]
    seen.extend(fresh)
    return fresh


def test_plain_lines_are_read_by_the_slicer_parser_at_the_right_percentage():
    stream = io.StringIO()
    progress = StagedProgress(STAGES, stream=stream)
    progress.bar.mininterval = 0
    seen: list[str] = []
    assert new_lines(stream, seen) == ["preprocess:   0%| 00:00"]
    steps = [("preprocess", 0.5), ("preprocess", 1.0), ("network", 0.0), ("network", 0.25), ("network", 0.25),
             ("network", 0.5), ("network", 1.0), ("postprocess", 1.0), ("write", 0.0)]
    for stage, fraction in steps:
        before = int(progress.value), progress.bar.stage
        progress.update(stage, fraction)
        lines = new_lines(stream, seen)
        if (int(progress.value), stage) == before:
            assert lines == []  # nothing new to say: no line
            continue
        assert len(lines) == 1 and lines[0].startswith(f"{stage}: ")
        assert parseProgress(lines[0]) == int(progress.value)
    progress.close()
    assert new_lines(stream, seen) == ["write: 100%| 00:00"]
    assert "\r" not in stream.getvalue()
    values = [parseProgress(line) for line in seen]
    assert None not in values and values == sorted(values)
    assert [parseProgress(line) for line in LineSplitter().feed(stream.getvalue())] == values


def test_plain_lines_are_few_a_line_per_stage_when_updates_are_fast():
    stream = io.StringIO()
    progress = StagedProgress(STAGES, stream=stream)  # default: at most one in-stage line a second
    for stage in STAGES:
        for step in range(1, 2001):
            progress.update(stage, step / 2000)
    progress.close()
    lines = stream.getvalue().splitlines()
    stages = [line.split(":")[0] for line in lines]
    assert list(dict.fromkeys(stages)) == list(STAGES)  # every stage change is a line, in order
    assert len(lines) <= len(STAGES) + 2  # 8000 updates: the stage lines, the final 100 %, at most a timed one
    assert parseProgress(lines[-1]) == 100


def test_a_failed_run_does_not_end_at_100_percent():
    stream = io.StringIO()
    progress = StagedProgress(STAGES, stream=stream)
    progress.update("network", 0.5)
    progress.close(completed=False)
    assert max(parseProgress(line) for line in stream.getvalue().splitlines()) < 100


def test_a_terminal_gets_the_redrawn_bar_and_disabled_draws_nothing():
    terminal = Terminal()
    progress = StagedProgress(STAGES, stream=terminal)
    progress.bar.mininterval = 0
    progress.update("network", 0.5)
    progress.close()
    assert "\r" in terminal.getvalue()
    assert [parseProgress(line) for line in LineSplitter().feed(terminal.getvalue())][-1] == 100
    quiet = io.StringIO()
    progress = StagedProgress(STAGES, enabled=False, stream=quiet)
    progress.update("network", 0.5)
    progress.close()
    assert quiet.getvalue() == ""


def test_segment_stderr_is_whole_progress_lines_only(tmp_path, capfd, tiny_model):
    case = write_volume(tmp_path / "in" / "case.nii.gz")
    code = main(["segment", str(case), "-m", str(tiny_model.folder), "-o", str(tmp_path / "seg.nii.gz"), "--device",
                 "cpu"])
    err = capfd.readouterr().err
    assert code == 0
    assert "\r" not in err and messages(err) == []
    lines = err.splitlines()
    values = [parseProgress(line) for line in lines]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 100
    assert {line.split(":")[0] for line in lines} == set(STAGES)


@pytest.mark.parametrize("command", ["segment", "classify", "evaluate", "train"])
def test_no_progress_before_an_argument_error(tmp_path, capfd, tiny_model, tiny_classifier, command):
    missing = tmp_path / "missing.nii.gz"
    argv = {
        "segment": ["segment", str(missing), "-m", str(tiny_model.folder), "-o", str(tmp_path / "s.nii.gz")],
        "classify": ["classify", str(missing), "-m", str(tiny_classifier.folder), "-o", str(tmp_path / "r.json")],
        "evaluate": ["evaluate", "-m", str(tiny_model.folder), "--data", str(missing), "-o", str(tmp_path / "r.json")],
        "train": ["train", "--data", str(missing), "-o", str(tmp_path / "package")],
    }[command]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert one_message(err).startswith(f"cad {command}: error: {missing}: ")
    assert "%|" not in err and len(err.splitlines()) == 1


def _dataset(folder, tiny_shape=(20, 24, 18)):
    """One image/label pair whose labels 1 and 2 are large blocks, so the untrained model's guess overlaps them
    somewhere and MONAI's Hausdorff distance (the call that warned) really runs."""
    write_volume(folder / "images" / "c1.nii.gz", tiny_shape)
    label = np.zeros(tiny_shape, np.uint8)
    label[:, :, : tiny_shape[2] // 2] = 1
    label[:, :, tiny_shape[2] // 2:] = 2
    (folder / "labels").mkdir(parents=True)
    sitk.WriteImage(sitk.GetImageFromArray(label), str(folder / "labels" / "c1.nii.gz"))
    return folder


def test_evaluate_prints_no_future_warning(tmp_path, tiny_model):
    from cadcore.evaluation.metrics import hd95

    block = np.zeros((8, 8, 8), bool)
    block[2:6, 2:6, 2:6] = True
    with warnings.catch_warnings(record=True) as caught:  # control: MONAI does warn here, outside the CLI
        warnings.simplefilter("always")
        hd95(block, np.roll(block, 1, 0), (1.0, 1.0, 1.0))
    if not any(issubclass(w.category, (FutureWarning, DeprecationWarning)) for w in caught):
        pytest.skip("this MONAI version no longer warns in compute_hausdorff_distance")
    data = _dataset(tmp_path / "data")
    report = tmp_path / "report.json"
    done = subprocess.run(engine_command("evaluate", "-m", str(tiny_model.folder), "--data", str(data), "--split",
                                         "all", "-o", str(report), "--device", "cpu"),
                          capture_output=True, text=True, env=engine_env(), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and messages(done.stderr) == []
    scored = json.loads(report.read_text())["per_label"]
    assert any(row["hd95_mean"] is not None for row in scored.values())  # the warning's code path did run


def test_a_closed_stdout_pipe_is_not_a_traceback(tiny_model):
    run = subprocess.Popen(engine_command("models", "show", str(tiny_model.folder)), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=engine_env())
    run.stdout.close()  # the reader (`| head -1`) has gone before the card is printed
    code = run.wait(timeout=120)
    err = run.stderr.read().decode()
    run.stderr.close()
    assert code == 141 and err == ""
