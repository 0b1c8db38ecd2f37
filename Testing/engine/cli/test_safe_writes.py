"""Writing safely (issue 14, item 3): outputs checked before any work, read back before they are published, never
replaced by a racing writer without --force, and rolled back on a full disk or a signal.

Each refusal: exit 2, one stderr line (besides progress lines, told apart as the Slicer module does) naming the file,
and the output folder unchanged, hidden entries included. Disk-full and read-only cases run on a real small tmpfs
(skipped where mounting is not allowed) and again by fault injection (always).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import SimpleITK as sitk
from cli_checks import engine_command, engine_env, messages, one_message, snapshot, tmpfs, write_volume

from cadcore.cli import main
from cadcore.errors import CadError
from cadcore.io.writing import all_or_none, atomic_path, publishing, write_image, write_json


@pytest.fixture
def case(tmp_path: Path) -> Path:
    return write_volume(tmp_path / "in" / "case.nii.gz")


def segment(capfd, case: Path, model: Path, output: Path, *extra: str) -> tuple[int, str]:
    code = main(["segment", str(case), "-m", str(model), "-o", str(output), "--device", "cpu", *extra])
    return code, capfd.readouterr().err


# --- 1. checked before any work -------------------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
@pytest.mark.parametrize("which", ["-o", "--probabilities", "--png", "sidecar"])
def test_segment_output_named_like_a_folder_is_one_line(tmp_path, capfd, case, tiny_model, which, force):
    out = tmp_path / "out"
    names = {"-o": "seg.nii.gz", "--probabilities": "prob.nii.gz", "--png": "view.png", "sidecar": "seg.nii.gz.json"}
    (out / names[which]).mkdir(parents=True)
    extra = [] if which in ("-o", "sidecar") else [which, str(out / names[which])]
    before = snapshot(out)
    code, err = segment(capfd, case, tiny_model.folder, out / "seg.nii.gz", *extra, *(["--force"] if force else []))
    assert code == 2
    assert one_message(err) == f"cad segment: error: {out / names[which]}: is a folder; give a file name for the output"
    assert snapshot(out) == before


@pytest.mark.parametrize("command", ["classify", "evaluate", "train"])
def test_other_commands_refuse_a_folder_or_file_in_the_way(tmp_path, capfd, case, tiny_classifier, tiny_model,
                                                          command):
    out = tmp_path / "out"
    out.mkdir()
    if command == "train":
        (out / "package").write_text("a file where the package folder goes")
        argv = ["train", "--data", str(tmp_path / "in"), "-o", str(out / "package"), "--force"]
        expected = f"{out / 'package'}: is a file; give a folder for the output"
    else:
        (out / "result.json").mkdir()
        model = tiny_classifier if command == "classify" else tiny_model
        argv = ([command, str(case)] if command == "classify" else [command, "--data", str(tmp_path / "in")]) + [
            "-m", str(model.folder), "-o", str(out / "result.json"), "--force"]
        expected = f"{out / 'result.json'}: is a folder; give a file name for the output"
    before = snapshot(out)
    assert main(argv) == 2
    assert one_message(capfd.readouterr().err) == f"cad {command}: error: {expected}"
    assert snapshot(out) == before


def test_output_named_like_the_input_or_twice_is_refused(tmp_path, capfd, case, tiny_model):
    before = snapshot(tmp_path)
    code, err = segment(capfd, case, tiny_model.folder, case, "--force")
    assert code == 2 and one_message(err).startswith(f"cad segment: error: {case}: is given twice (as the input")
    twice = tmp_path / "a.nrrd"
    code, err = segment(capfd, case, tiny_model.folder, twice, "--probabilities", str(twice))
    assert code == 2 and one_message(err).startswith(f"cad segment: error: {tmp_path / 'a.nrrd'}: is given twice")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["segment", "classify", "evaluate", "train"])
def test_read_only_output_folder_is_one_line_before_any_work(tmp_path, capfd, case, tiny_model, tiny_classifier,
                                                             command):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        argv = {
            "segment": ["segment", str(case), "-m", str(tiny_model.folder), "-o", str(folder / "seg.nii.gz")],
            "classify": ["classify", str(case), "-m", str(tiny_classifier.folder), "-o", str(folder / "r.json")],
            "evaluate": ["evaluate", "-m", str(tiny_model.folder), "--data", str(tmp_path / "no-such-data"), "-o",
                         str(folder / "r.json")],
            "train": ["train", "--data", str(tmp_path / "no-such-data"), "-o", str(folder / "package")],
        }[command]
        assert main(argv) == 2
        line = one_message(capfd.readouterr().err)
        assert line.startswith(f"cad {command}: error: {Path(argv[argv.index('-o') + 1])}: cannot write in the "
                               f"output folder {folder} (Read-only file system)")
        assert snapshot(folder) == {}


def test_unwritable_output_folder_by_fault_injection(tmp_path, capfd, case, tiny_model, monkeypatch):
    """Where no mount is allowed: the probe file cannot be created (as on a read-only or full file system)."""
    import cadcore.io.writing as writing

    def refused(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(writing.tempfile, "mkstemp", refused)
    code, err = segment(capfd, case, tiny_model.folder, out / "seg.nii.gz")
    assert code == 2
    assert one_message(err) == (f"cad segment: error: {out / 'seg.nii.gz'}: cannot write in the output folder {out} "
                                f"({os.strerror(errno.EROFS)})")
    assert snapshot(out) == {}


# --- 2. read back before publishing; a full disk is one line and leaves nothing --------------------------------------


@pytest.mark.parametrize(("size", "output", "extra", "named"), [
    ("64k", "seg.nii.gz", ["--probabilities", "prob.nii.gz"], "prob.nii.gz"),  # NIfTI: the writer says nothing
    ("64k", "seg.nii.gz", ["--probabilities", "prob.nrrd"], "prob.nrrd"),  # NRRD: the writer raises
    ("8k", "seg.nii", [], "seg.nii"),  # the labelmap itself, uncompressed
    ("16k", "seg.nii.gz", ["--png", "view.png"], "view.png"),  # matplotlib's OSError
])
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, capfd, case, tiny_model, size, output, extra, named):
    with tmpfs(tmp_path / "full", f"size={size}") as folder:
        extra = [value if value.startswith("--") else str(folder / value) for value in extra]
        code, err = segment(capfd, case, tiny_model.folder, folder / output, *extra)
        assert code == 2
        line = one_message(err)
        assert line.startswith(f"cad segment: error: {folder / named}: ")
        assert "disk is full" in line or "No space left" in line
        assert snapshot(folder) == {}  # no labelmap, no sidecar, no hidden temporary folder


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_silently_failed_image_write_is_caught_by_reading_back(tmp_path, capfd, case, tiny_model, monkeypatch,
                                                                 damage):
    """Fault injection of what NIfTI does on a full disk: WriteImage returns normally, the file is empty or cut."""
    real_write = sitk.WriteImage

    def silent_failure(image, name, *args):
        if not str(name).endswith("prob.nii.gz"):
            return real_write(image, name, *args)
        real_write(image, name, *args)
        with open(name, "r+b") as handle:
            handle.truncate(0 if damage == "empty" else os.path.getsize(name) // 2)
        return None

    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(sitk, "WriteImage", silent_failure)
    code, err = segment(capfd, case, tiny_model.folder, out / "seg.nrrd", "--probabilities", str(out / "prob.nii.gz"))
    assert code == 2
    line = one_message(err)
    reason = "was written empty" if damage == "empty" else "was written incompletely"
    assert line.startswith(f"cad segment: error: {out / 'prob.nii.gz'}: {reason}")
    assert snapshot(out) == {}


def test_json_onto_a_full_disk_is_one_error_naming_it(tmp_path):
    with tmpfs(tmp_path / "full", "size=16k") as folder:
        filler = folder / "filler"
        with pytest.raises(OSError), open(filler, "wb") as handle:
            while True:
                handle.write(b"x" * 4096)
                handle.flush()
        before = snapshot(folder)
        with pytest.raises(CadError, match=f"^{folder / 'report.json'}: "):
            write_json(folder / "report.json", {"values": list(range(5000))})
        assert snapshot(folder) == before


# --- 3. publishing without --force never replaces ----------------------------------------------------------------


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_file_that_appears_meanwhile_is_not_replaced(tmp_path, monkeypatch, hard_links):
    if not hard_links:  # e.g. FAT or some network shares: the exclusive-create fallback
        monkeypatch.setattr(os, "link", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EPERM, "no links")))
    target = tmp_path / "report.json"
    with pytest.raises(CadError, match="output exists"), publishing(replace=False), atomic_path(target) as tmp:
        tmp.write_text('{"mine": 1}')
        target.write_text('{"theirs": 1}')  # the other process published first
    assert target.read_text() == '{"theirs": 1}' and sorted(os.listdir(tmp_path)) == ["report.json"]
    with publishing(replace=True):
        write_json(target, {"mine": 2})
    assert json.loads(target.read_text()) == {"mine": 2} and sorted(os.listdir(tmp_path)) == ["report.json"]


def test_two_racing_segments_one_wins(tmp_path, case, tiny_model):
    out = tmp_path / "out"
    out.mkdir()
    argv = engine_command("segment", str(case), "-m", str(tiny_model.folder), "-o", str(out / "seg.seg.nrrd"),
                          "--device", "cpu")
    runs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=engine_env())
            for _ in range(2)]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    for run in runs:
        run.stdout.close()
        run.stderr.close()
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert one_message(loser).startswith(f"cad segment: error: {out / 'seg.seg.nrrd'}: output exists")
    assert sorted(snapshot(out)) == ["seg.seg.nrrd", "seg.seg.nrrd.json"]
    assert sitk.ReadImage(str(out / "seg.seg.nrrd")).GetSize() == sitk.ReadImage(str(case)).GetSize()
    assert json.loads((out / "seg.seg.nrrd.json").read_text())["model"] == tiny_model.id


# --- 4. signals: every command, rollback runs -----------------------------------------------------------------------


def _kill_self(sig: int = signal.SIGTERM):
    def send(*args, **kwargs):
        os.kill(os.getpid(), sig)
        raise AssertionError("the signal should have interrupted before this line")
    return send


@pytest.mark.parametrize("moment", ["probabilities", "sidecar"])
def test_signal_while_writing_leaves_no_output(tmp_path, capfd, case, tiny_model, monkeypatch, moment):
    import cadcore.cli.segment as segment_cli

    out = tmp_path / "out"
    out.mkdir()
    if moment == "probabilities":  # inside the atomic write: the hidden temporary folder must go too
        real_write = sitk.WriteImage

        def write_then_signal(image, name, *args):
            real_write(image, name, *args)
            if str(name).endswith("prob.nii.gz"):
                os.kill(os.getpid(), signal.SIGTERM)
        monkeypatch.setattr(sitk, "WriteImage", write_then_signal)
    else:  # labelmap and probabilities already published, sidecar not yet: they must be removed
        monkeypatch.setattr(segment_cli, "write_json", _kill_self())
    code, err = segment(capfd, case, tiny_model.folder, out / "seg.nii.gz", "--probabilities", str(out / "prob.nii.gz"))
    assert code == 143
    assert messages(err) == ["cad segment: interrupted"]
    assert snapshot(out) == {}


@pytest.mark.parametrize(("command", "target"), [
    ("classify", "cadcore.cli.classify.classify_image"),
    ("evaluate", "cadcore.cli.evaluate.evaluate"),
    ("train", "cadcore.training.segmentation.train"),
    ("models", "cadcore.cli.models.list_all"),
])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_every_command_turns_signals_into_one_line_and_128_plus_n(tmp_path, capfd, case, tiny_model,
                                                                  tiny_classifier, monkeypatch, command, target, sig):
    monkeypatch.setattr(target, _kill_self(sig))
    out = tmp_path / "out"
    out.mkdir()
    argv = {
        "classify": ["classify", str(case), "-m", str(tiny_classifier.folder), "-o", str(out / "r.json"),
                     "--device", "cpu"],
        "evaluate": ["evaluate", "-m", str(tiny_model.folder), "--data", str(tmp_path / "in"), "--split", "all",
                     "-o", str(out / "r.json")],
        "train": ["train", "--data", str(tmp_path / "in"), "-o", str(out / "package")],
        "models": ["models", "list"],
    }[command]
    handler = signal.getsignal(sig)
    assert main(argv) == 128 + sig
    assert messages(capfd.readouterr().err) == [f"cad {command}: interrupted"]
    assert snapshot(out) == {}
    assert signal.getsignal(sig) is handler  # an in-process caller gets its own handlers back


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_inference_in_a_real_process(tmp_path, case, tiny_model, sig):
    """A slow real run (large volume, overlap 0.9) signalled once its network stage has started."""
    source = write_volume(tmp_path / "in" / "large.nii.gz", shape=(64, 64, 64))
    out = tmp_path / "out"
    out.mkdir()
    run = subprocess.Popen(engine_command("segment", str(source), "-m", str(tiny_model.folder), "-o",
                                          str(out / "seg.nii.gz"), "--probabilities", str(out / "prob.nii.gz"),
                                          "--png", str(out / "view.png"), "--overlap", "0.9", "--device", "cpu"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=engine_env())
    seen = []
    try:
        for line in run.stderr:
            seen.append(line)
            if line.startswith("network:") and "%|" in line:
                break
        else:
            pytest.fail(f"no network progress line; stderr was {seen!r}")
        run.send_signal(sig)
        code = run.wait(timeout=120)
        err = "".join(seen) + run.stderr.read()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        run.stdout.close()
        run.stderr.close()
    assert code == 128 + sig
    assert messages(err) == ["cad segment: interrupted"]
    assert snapshot(out) == {}  # no labelmap, no sidecar, no hidden ".seg.nii.gz.*" temporary folder


@pytest.mark.parametrize("replace", [False, True])
def test_a_signal_right_after_the_rename_is_still_rolled_back(tmp_path, monkeypatch, replace):
    """The one-bytecode window between publishing a file and recording it: the interrupt waits for the record."""
    from cadcore.cli import interrupt_on_signals

    name = "replace" if replace else "link"
    real = getattr(os, name)

    def move_then_signal(source, target):
        real(source, target)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(os, name, move_then_signal)
    restore = interrupt_on_signals()
    try:
        with pytest.raises(KeyboardInterrupt), all_or_none(replace=replace):
            write_json(tmp_path / "first.json", {"a": 1})
            raise AssertionError("the interrupt should have stopped the block after the first file")
    finally:
        restore()
    assert snapshot(tmp_path) == {}


def test_write_image_refuses_to_replace_a_folder_even_when_forced(tmp_path, oblique_image):
    (tmp_path / "x.nii.gz").mkdir()
    with pytest.raises(CadError, match="is a folder"), publishing(replace=True):
        write_image(oblique_image, tmp_path / "x.nii.gz")
    assert sorted(os.listdir(tmp_path)) == ["x.nii.gz"]
