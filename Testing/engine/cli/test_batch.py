"""``cad batch`` (issue 20): a cohort in, one output per case, summary.csv, shards, resume after kill -9, merge.

Real files, the real engine and a tiny random-weight model; every output is compared with what ``cad segment``
writes for the same input, so the network cache and the read-ahead cannot change a result unnoticed.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_writer import blob_volume, write_series

from cadcore.io.batch_inputs import find_cases, take_shard
from conftest import REPO, run_cad


def write_volume(path: Path, shape=(20, 24, 22), seed: int = 0) -> Path:
    image = sitk.GetImageFromArray(blob_volume(shape, seed).astype(np.float32))
    image.SetSpacing((1.1, 0.9, 1.3))
    image.SetOrigin((-5.0, 3.0, 7.5))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def cohort(folder: Path, count: int, shape=(20, 24, 22)) -> list[Path]:
    """``count`` volumes, some in sub-folders and some as NRRD, all with distinct names."""
    return [write_volume(folder / ("sub" if k % 3 == 0 else "") / f"case_{k:02d}{'.nrrd' if k % 4 == 1 else '.nii.gz'}",
                         shape, seed=k) for k in range(count)]


def summary(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as stream:
        return {row["id"]: row for row in csv.DictReader(stream)}


def labels_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def batch(capsys, inputs: Path, model, out: Path, *extra: str) -> tuple[int, str, str]:
    return run_cad(capsys, "batch", str(inputs), "-m", str(model.folder), "-o", str(out), *extra)


def test_mixed_folder_good_cases_done_bad_ones_recorded_exit_1(tmp_path, tiny_model, capsys):
    inputs = tmp_path / "inputs"
    good = cohort(inputs, 3)
    write_series(inputs / "dicom" / "series_7", blob_volume((8, 18, 16), seed=7))
    (inputs / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    flat = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(20, 20)).astype(np.float32))
    sitk.WriteImage(flat, str(inputs / "flat2d.nii.gz"))
    (inputs / "notes.txt").write_text("not an image")  # neither an image suffix nor DICOM: not a case
    out = tmp_path / "out"
    code, stdout, stderr = batch(capsys, inputs, tiny_model, out)
    assert code == 1
    rows = summary(out / "summary.csv")
    ok = {path.name.split(".")[0] for path in good} | {"series_7"}
    assert {k for k, row in rows.items() if row["status"] == "ok"} == ok
    assert {k for k, row in rows.items() if row["status"] == "failed"} == {"corrupt", "flat2d"}
    assert "2D" in rows["flat2d"]["error"] and str(inputs / "flat2d.nii.gz") in rows["flat2d"]["error"]
    assert str(inputs / "corrupt.nii.gz") in rows["corrupt"]["error"]
    for row in rows.values():
        assert "\n" not in row["error"]
    assert f"case corrupt: failed: {rows['corrupt']['error']}" in stdout
    assert stdout.strip().splitlines()[-1] == f"batch: 4 ok, 2 failed, summary {out / 'summary.csv'}"
    assert "Traceback" not in stderr and all("%|" in line for line in stderr.splitlines())
    assert not (out / "corrupt.nii.gz").exists() and not (out / "flat2d.nii.gz.json").exists()
    assert list(rows) == sorted(rows) and list(rows["case_00"])[:5] == ["id", "input", "status", "error", "output"]
    assert list(rows["case_00"])[-2:] == ["seconds", "warnings"]
    for case_id, source in [*((p.name.split(".")[0], p) for p in good), ("series_7", inputs / "dicom" / "series_7")]:
        reference = tmp_path / f"ref_{case_id}.nii.gz"
        assert run_cad(capsys, "segment", str(source), "-m", str(tiny_model.folder), "-o", str(reference))[0] == 0
        assert np.array_equal(labels_of(out / f"{case_id}.nii.gz"), labels_of(reference))
        sidecar = json.loads((out / f"{case_id}.nii.gz.json").read_text())
        reference_sidecar = json.loads(Path(f"{reference}.json").read_text())
        assert [lab["voxels"] for lab in sidecar["labels"]] == [lab["voxels"] for lab in reference_sidecar["labels"]]
        assert float(rows[case_id]["volume_ml:anterior"]) == pytest.approx(sidecar["labels"][0]["volume_ml"])
        assert sidecar["geometry"] == reference_sidecar["geometry"]


def test_model_weights_are_read_once_for_the_whole_batch(tmp_path, tiny_model, capsys, monkeypatch):
    from cadcore.registry.packages import ModelPackage

    calls = []
    original = ModelPackage.load_state_dict
    monkeypatch.setattr(ModelPackage, "load_state_dict", lambda self: calls.append(1) or original(self))
    cohort(tmp_path / "in", 4)
    assert batch(capsys, tmp_path / "in", tiny_model, tmp_path / "out")[0] == 0
    assert len(calls) == 1
    from cadcore.registry import networks

    assert networks._REUSED is None  # the batch's networks are dropped when it ends: a later caller builds anew


def test_three_shards_give_exactly_the_unsharded_outputs_and_merge(tmp_path, tiny_model, capsys):
    inputs = tmp_path / "inputs"
    cohort(inputs, 8)
    assert batch(capsys, inputs, tiny_model, tmp_path / "whole")[0] == 0
    for k in range(3):
        code, stdout, _ = batch(capsys, inputs, tiny_model, tmp_path / "sharded", "--shard", f"{k}/3")
        assert code == 0 and f"summary-shard-{k}-of-3.csv" in stdout
    whole = sorted(p.name for p in (tmp_path / "whole").iterdir() if p.name != "summary.csv")
    sharded = sorted(p.name for p in (tmp_path / "sharded").iterdir() if not p.name.startswith("summary"))
    assert whole == sharded and len(whole) == 16
    for name in whole:
        if name.endswith(".nii.gz"):
            assert np.array_equal(labels_of(tmp_path / "whole" / name), labels_of(tmp_path / "sharded" / name))
    parts = [summary(tmp_path / "sharded" / f"summary-shard-{k}-of-3.csv") for k in range(3)]
    assert sorted(sum((list(part) for part in parts), [])) == sorted(summary(tmp_path / "whole" / "summary.csv"))
    code, stdout, _ = run_cad(capsys, "batch", "--merge", str(tmp_path / "sharded"), "-o", str(tmp_path / "m.csv"))
    assert code == 0 and stdout.strip() == f"batch: 8 ok, 0 failed, summary {tmp_path / 'm.csv'}"
    merged, reference = summary(tmp_path / "m.csv"), summary(tmp_path / "whole" / "summary.csv")
    assert list(merged) == list(reference)
    for case_id, row in merged.items():
        assert {k: v for k, v in row.items() if k.startswith("volume_ml")} == {
            k: v for k, v in reference[case_id].items() if k.startswith("volume_ml")}
    code, _, err = run_cad(capsys, "batch", "--merge", str(tmp_path / "sharded"), str(tmp_path / "sharded"), "-o",
                           str(tmp_path / "m2.csv"))
    assert code == 2 and err.count("\n") == 1 and "case_00" in err  # a case in two summaries


def test_shards_partition_the_cases_deterministically(tmp_path):
    cohort(tmp_path, 10)
    cases = find_cases(tmp_path)
    shards = [take_shard(list(reversed(cases)), (k, 4)) for k in range(4)]
    ids = [case.id for shard in shards for case in shard]
    assert sorted(ids) == [case.id for case in cases] and len(set(ids)) == 10
    assert [c.id for c in shards[1]] == [c.id for c in take_shard(cases, (1, 4))]


def test_resume_after_kill_9_completes_with_every_output_valid(tmp_path, tiny_model, capsys):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    cohort(inputs, 10, shape=(56, 60, 52))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "CADExtension"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "cadcore", "batch", str(inputs), "-m", str(tiny_model.folder),
                                "-o", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "summary.csv").exists() and len(summary(out / "summary.csv")) >= 3:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done_before = summary(out / "summary.csv")
    assert 3 <= len(done_before) < 10, "the run should have been killed mid-way"
    remaining = sorted({f"case_{k:02d}" for k in range(10)} - set(done_before))
    # what a kill can leave: a truncated output with no sidecar, and an output + sidecar with no summary row
    half = out / f"{remaining[0]}.nii.gz"
    half.write_bytes((out / f"{next(iter(done_before))}.nii.gz").read_bytes()[:200])
    (out / f".{remaining[1]}.nii.gz.leftover").mkdir()
    stamps = {case_id: (out / f"{case_id}.nii.gz").stat().st_mtime_ns for case_id in done_before}
    code, stdout, err = batch(capsys, inputs, tiny_model, out)
    assert code == 2 and "--resume" in err and err.count("\n") == 1  # earlier results are never silently mixed in
    code, stdout, err = batch(capsys, inputs, tiny_model, out, "--resume")
    assert code == 0, err
    assert f"{10 - len(done_before)} cases to run ({len(done_before)} already complete)" in stdout
    rows = summary(out / "summary.csv")
    assert sorted(rows) == [f"case_{k:02d}" for k in range(10)] and all(r["status"] == "ok" for r in rows.values())
    assert {case_id: (out / f"{case_id}.nii.gz").stat().st_mtime_ns for case_id in done_before} == stamps
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert batch(capsys, inputs, tiny_model, tmp_path / "reference")[0] == 0
    for case_id in rows:
        assert np.array_equal(labels_of(out / f"{case_id}.nii.gz"), labels_of(tmp_path / "reference" /
                                                                               f"{case_id}.nii.gz"))
        assert json.loads((out / f"{case_id}.nii.gz.json").read_text())["output"] == str(out / f"{case_id}.nii.gz")


def test_two_workers_give_the_outputs_of_one(tmp_path, tiny_model, capsys):
    inputs = tmp_path / "inputs"
    cohort(inputs, 4)
    assert batch(capsys, inputs, tiny_model, tmp_path / "one")[0] == 0
    code, stdout, err = batch(capsys, inputs, tiny_model, tmp_path / "two", "--workers", "2", "--format", "nrrd")
    assert code == 0, err
    assert "2 workers" in stdout and sum(line.startswith("case ") for line in stdout.splitlines()) == 4
    for case_id in summary(tmp_path / "one" / "summary.csv"):
        assert np.array_equal(labels_of(tmp_path / "one" / f"{case_id}.nii.gz"),
                              labels_of(tmp_path / "two" / f"{case_id}.nrrd"))


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_csv_and_dataset_json_inputs_with_ids(tmp_path, tiny_model, capsys, kind):
    volumes = cohort(tmp_path / "data", 2)
    if kind == "csv":
        listing = tmp_path / "cases.csv"
        listing.write_text(f"image,id\n{volumes[0].relative_to(tmp_path)},first\n{volumes[1]},second\n")
        expected = {"first", "second"}
    else:
        listing = tmp_path / "dataset.json"
        listing.write_text(json.dumps({"training": [{"image": f"./{volumes[0].relative_to(tmp_path)}"}],
                                       "test": [str(volumes[1])]}))
        expected = {volumes[0].name.split(".")[0], volumes[1].name.split(".")[0]}
    code, stdout, err = batch(capsys, listing, tiny_model, tmp_path / "out")
    assert code == 0, err
    assert set(summary(tmp_path / "out" / "summary.csv")) == expected
    assert all((tmp_path / "out" / f"{case_id}.nii.gz").exists() for case_id in expected)


def test_bad_arguments_exit_2_in_one_line_and_write_nothing(tmp_path, tiny_model, capsys):
    inputs = tmp_path / "inputs"
    write_volume(inputs / "a.nii.gz")
    write_volume(inputs / "deeper" / "a.nrrd")
    out = tmp_path / "out"
    for extra, words in [((), "two cases have the id 'a'"), (("--shard", "3/3"), "0 <= K < N"),
                         (("--shard", "x"), "K/N"), (("--workers", "0"), "--workers"),
                         (("--resume", "--force"), "one of them")]:
        code, stdout, err = batch(capsys, inputs, tiny_model, out, *extra)
        assert code == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, (extra, err)
        assert not out.exists()
    code, _, err = run_cad(capsys, "batch", str(tmp_path / "absent"), "-m", str(tiny_model.folder), "-o", str(out))
    assert code == 2 and "not found" in err and not out.exists()


def test_symbolic_links_are_not_followed(tmp_path, tiny_model, capsys):
    inputs = tmp_path / "inputs"
    write_volume(inputs / "real.nii.gz")
    elsewhere = write_volume(tmp_path / "elsewhere" / "linked.nii.gz")
    (inputs / "link.nii.gz").symlink_to(elsewhere)
    (inputs / "loop").symlink_to(inputs, target_is_directory=True)
    (inputs / "dir_link").symlink_to(elsewhere.parent, target_is_directory=True)
    assert [case.id for case in find_cases(inputs)] == ["real"]


def test_uncertainty_map_and_sidecar_object_are_written_per_case(tmp_path, tiny_model, capsys):
    """``--uncertainty`` writes ``<id>_uncertainty.nii.gz`` on the input's grid, equal to ``cad segment
    --uncertainty``'s map, plus the sidecar's ``uncertainty`` object; a missing map means the case is redone."""
    volumes = cohort(tmp_path / "in", 2)
    code, _, err = batch(capsys, tmp_path / "in", tiny_model, tmp_path / "out", "--uncertainty")
    assert code == 0, err
    for volume in volumes:
        case_id = volume.name.split(".")[0]
        entropy = sitk.ReadImage(str(tmp_path / "out" / f"{case_id}_uncertainty.nii.gz"))
        source = sitk.ReadImage(str(volume))
        assert entropy.GetSize() == source.GetSize() and np.allclose(entropy.GetOrigin(), source.GetOrigin())
        reference = tmp_path / f"ref_{case_id}_uncertainty.nii.gz"
        assert run_cad(capsys, "segment", str(volume), "-m", str(tiny_model.folder), "-o",
                       str(tmp_path / f"ref_{case_id}.nii.gz"), "--uncertainty", str(reference))[0] == 0
        np.testing.assert_array_equal(sitk.GetArrayFromImage(entropy),  # copies: a view of a temporary dangles
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(reference))))
        sidecar = json.loads((tmp_path / "out" / f"{case_id}.nii.gz.json").read_text())
        assert sidecar["uncertainty"]["file"] == str(tmp_path / "out" / f"{case_id}_uncertainty.nii.gz")
        assert 0.0 <= sidecar["uncertainty"]["mean"] <= 1.0
    (tmp_path / "out" / f"{volumes[0].name.split('.')[0]}_uncertainty.nii.gz").unlink()
    code, stdout, _ = batch(capsys, tmp_path / "in", tiny_model, tmp_path / "out", "--uncertainty", "--resume")
    assert code == 0 and "1 cases to run (1 already complete)" in stdout  # a missing map means the case is redone


def test_uncertainty_with_a_model_that_has_none_is_one_line_before_any_case(tmp_path, capsys):
    cohort(tmp_path / "in", 2)
    code, stdout, err = run_cad(capsys, "batch", str(tmp_path / "in"), "-m", "brain-mask", "-o", str(tmp_path / "out"),
                                "--uncertainty")
    assert code == 2 and "--uncertainty is not available" in err and len(err.strip().splitlines()) == 1
    assert "case " not in stdout and not (tmp_path / "out").exists()


def test_a_killed_worker_fails_its_case_and_the_others_finish(tmp_path, tiny_model):
    """kill -9 of one of two worker processes mid-run: the case it was running (if any) is a failed row, the one it
    was reading ahead is done by the other worker, every other case is done; exit 1 when a case failed."""
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    cohort(inputs, 8, shape=(56, 60, 52))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "CADExtension"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "cadcore", "batch", str(inputs), "-m", str(tiny_model.folder),
                                "-o", str(out), "--workers", "2"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)

    def workers() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == process.pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
        return found

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (out / "summary.csv").exists() and len(summary(out / "summary.csv")) >= 1 and len(workers()) == 2:
            break
        time.sleep(0.05)
    assert len(summary(out / "summary.csv")) < 8, "the worker should be killed mid-run"
    os.kill(workers()[0], signal.SIGKILL)
    stdout, _ = process.communicate(timeout=300)
    rows = summary(out / "summary.csv")
    assert sorted(rows) == [f"case_{k:02d}" for k in range(8)]
    failed = [row for row in rows.values() if row["status"] == "failed"]
    # killed while running a case: that case fails; killed between cases (reading ahead): nothing is lost
    assert len(failed) <= 1 and all("worker process died (exit code -9)" in row["error"] for row in failed)
    assert process.returncode == (1 if failed else 0), stdout
    for case_id, row in rows.items():
        assert (out / f"{case_id}.nii.gz.json").exists() == (row["status"] == "ok")


DIE_AFTER_PUBLISHING = """
import multiprocessing, os, signal

MARKER = os.environ["CAD_TEST_DIE_MARKER"]


def dying(publish):
    def wrapped(source, target, *args, **kwargs):
        publish(source, target, *args, **kwargs)
        if multiprocessing.parent_process() is not None and str(target).endswith(".nii.gz.json"):
            try:
                os.close(os.open(MARKER, os.O_CREAT | os.O_EXCL))  # the first worker to publish a sidecar, once
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)
    return wrapped


os.replace, os.link = dying(os.replace), dying(os.link)
"""


def test_a_worker_killed_after_publishing_a_case_leaves_no_outputs_for_its_failed_row(tmp_path, tiny_model):
    """The narrowest moment: a worker dies right after its case's sidecar (the last file) is published, before it
    reports the case. The row is failed, so the case's files go too: a failed row never sits beside outputs that
    look complete (``--resume`` redoes it). Deterministic: a ``sitecustomize`` in the workers kills the first one
    to publish a sidecar, at that instant."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DIE_AFTER_PUBLISHING)
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    cohort(inputs, 4)
    env = {**os.environ, "CAD_TEST_DIE_MARKER": str(tmp_path / "died"),
           "PYTHONPATH": os.pathsep.join([str(hook), str(REPO / "CADExtension"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "cadcore", "batch", str(inputs), "-m", str(tiny_model.folder), "-o",
                           str(out), "--workers", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "died").exists() and done.returncode == 1, done.stderr
    rows = summary(out / "summary.csv")
    failed = [case_id for case_id, row in rows.items() if row["status"] == "failed"]
    assert len(rows) == 4 and len(failed) == 1 and "worker process died (exit code -9)" in rows[failed[0]]["error"]
    for case_id, row in rows.items():
        assert (out / f"{case_id}.nii.gz.json").exists() == (row["status"] == "ok")
        assert (out / f"{case_id}.nii.gz").exists() == (row["status"] == "ok")


def test_a_pipelines_several_stages_read_their_weights_once_and_not_again_when_reused(tiny_model, monkeypatch):
    """hippodeep builds three networks from one weights file: ``load_networks`` reads (and hashes) it once, and
    inside ``reuse_networks`` a later case reads it not at all (it used to be read for every case)."""
    from cadcore.registry.networks import load_networks, reuse_networks
    from cadcore.registry.packages import ModelPackage

    calls = []
    original = ModelPackage.load_state_dict
    monkeypatch.setattr(ModelPackage, "load_state_dict", lambda self: calls.append(1) or original(self))
    stages = [tiny_model.card.main_stage, tiny_model.card.main_stage]
    first, second = load_networks(tiny_model, stages)
    assert len(calls) == 1 and first is not second
    with reuse_networks():
        one = load_networks(tiny_model, stages)
        again = load_networks(tiny_model, stages)
    assert len(calls) == 2 and again[0] is one[0]
