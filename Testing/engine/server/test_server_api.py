"""``cad serve``'s API on a real loopback socket with the shipped hippocampus model: the token gate, sessions
(upload, two at once, expiry, delete), the limits (413, 429, 503), and prompts whose masks, reports and refusals are
those of ``cad interact`` run on the same file."""

from __future__ import annotations

import base64
import gzip
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from server_client import CASE, CASES, MODEL, TRUTH, as_file, centre_click, read_file, running_server

from cadcore.cli import main
from cadcore.registry import find_model_or_bundle
from cadcore.segmentation.interactive import InteractiveSession, Prompts

CLICK = centre_click(sitk.ReadImage(str(TRUTH)), 1)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
            and a.GetDirection() == b.GetDirection())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("serve"), max_sessions=3, max_upload_mb=1) as running:
        yield running


@pytest.fixture
def session(served):
    answer = served.client.upload(CASE)
    assert answer.status == 201, answer.body
    yield answer.body["session"]
    served.client.call("DELETE", f"/sessions/{answer.body['session']}")


def test_every_route_needs_the_token(served):
    for token in (None, "", "wrong-" + served.token[6:], served.token + "x", served.token.upper()):
        for method, path in (("GET", "/health"), ("GET", "/models"), ("POST", "/sessions?name=a.nii.gz"),
                             ("GET", "/no-such-route"), ("DELETE", "/sessions/x")):
            answer = served.client.call(method, path, b"" if method == "POST" else None, token=token)
            assert answer.status == 401 and "token" in answer.error, (token, path, answer)
    assert served.client.call("GET", "/health").status == 200
    assert len(served.context.store) == 0  # no refused upload left a session behind


def test_health_and_models_with_the_token(served):
    health = served.client.call("GET", "/health")
    assert health.status == 200
    assert health.body["status"] == "ok" and health.body["device"] == "cpu" and health.body["version"]
    models = served.client.call("GET", "/models").body["models"]
    shown = {entry["id"]: entry for entry in models}
    assert shown[MODEL] == json.loads(json.dumps(find_model_or_bundle(MODEL).as_json()))  # as cad models show


def test_a_prompt_equals_cad_interact_on_the_same_file(served, session, tmp_path, capsys):
    negative = [CLICK[0] + 6.0, CLICK[1], CLICK[2]]
    answer = served.client.interact(session, positive=[CLICK], negative=[negative])
    assert answer.status == 200, answer.body
    output = tmp_path / "cli.nrrd"
    assert main(["interact", str(CASE), "-m", MODEL, "-o", str(output), "--label", "1", "--device", "cpu",
                 f"--click=+{CLICK[0]},{CLICK[1]},{CLICK[2]}", f"--click=-{negative[0]},{negative[1]},{negative[2]}"
                 ]) == 0, capsys.readouterr().err
    served_mask, cli_mask = read_file(answer.body["mask"], tmp_path), sitk.ReadImage(str(output))
    assert same_grid(served_mask, cli_mask) and same_grid(served_mask, sitk.ReadImage(str(CASE)))
    assert served_mask.GetPixelID() == cli_mask.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayViewFromImage(served_mask), sitk.GetArrayViewFromImage(cli_mask))
    assert sitk.GetArrayViewFromImage(cli_mask).sum() > 100
    report, cli_report = answer.body["report"], json.loads(Path(f"{output}.json").read_text())
    assert set(report) == set(cli_report)
    for key in set(report) - {"input", "output", "timings"}:
        assert report[key] == cli_report[key], key
    assert Path(report["input"]).name == "input.nii.gz" and Path(report["output"]).is_file()
    assert answer.body["uncertainty"] is None and cli_report["reused"] is False


def test_a_second_prompt_reuses_the_warm_session(served, session, tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    first = served.client.interact(session, positive=[CLICK])
    second = served.client.interact(session, positive=[CLICK])
    assert first.status == second.status == 200
    assert first.body["report"]["reused"] is False and "network_s" in first.body["report"]["timings"]
    assert second.body["report"]["reused"] is True and "cached_s" in second.body["report"]["timings"]
    masks = [sitk.GetArrayFromImage(read_file(a.body["mask"], tmp_path / name)) for a, name in ((first, "1"),
                                                                                                (second, "2"))]
    assert np.array_equal(*masks) and masks[0].sum() > 100
    assert MODEL in served.client.call("GET", "/health").body["models_loaded"]


def test_bad_prompts_get_the_cli_line(served, session, tmp_path, capsys):
    """A click outside the volume and a label the model lacks: HTTP 400 with ``cad interact``'s own stderr line (the
    file it names is the session's copy of the volume)."""
    outside = [CLICK[0] + 500.0, CLICK[1], CLICK[2]]
    served_input = served.client.interact(session, positive=[CLICK]).body["report"]["input"]
    cases = [({"positive": [outside]}, [f"--click=+{outside[0]},{outside[1]},{outside[2]}", "--label", "1"]),
             ({"positive": [CLICK], "label": 7}, [f"--click=+{CLICK[0]},{CLICK[1]},{CLICK[2]}", "--label", "7"]),
             ({"positive": []}, ["--label", "1"])]
    for body, flags in cases:
        answer = served.client.interact(session, **body)
        assert main(["interact", str(CASE), "-m", MODEL, "-o", str(tmp_path / "x.nrrd"), "--device", "cpu",
                     *flags]) == 2
        cli_line = capsys.readouterr().err.strip()
        assert answer.status == 400
        assert answer.error == cli_line.replace(str(CASE), served_input), (answer.error, cli_line)
    answer = served.client.interact(session, positive=[[1.0, 2.0]])
    assert answer.status == 400 and answer.error == \
        "cad interact: error: request: 'positive' must be a list of [R, A, S] points in mm"
    answer = served.client.interact(session, positive=[CLICK], model="../../etc")
    assert answer.status == 400 and "registry ids only" in answer.error


def test_two_sessions_at_once_each_get_their_own_result(served, tmp_path):
    images = {case: sitk.ReadImage(str(case)) for case in CASES[:2]}
    sessions = {case: served.client.upload(case).body["session"] for case in images}
    clicks = {case: [float(v) for v in np.round(centre_of(image), 3)] for case, image in images.items()}
    answers: dict[Path, object] = {}

    def prompt(case: Path) -> None:
        answers[case] = served.client.interact(sessions[case], positive=[clicks[case]], label=2)

    threads = [threading.Thread(target=prompt, args=(case,)) for case in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    model = find_model_or_bundle(MODEL)
    for case, image in images.items():
        answer = answers[case]
        assert answer.status == 200, answer.body
        mask = read_file(answer.body["mask"], tmp_path)
        assert same_grid(mask, image)
        expected = InteractiveSession(model, image, "cpu").segment(Prompts((tuple(clicks[case]),)), 2).mask
        assert np.array_equal(sitk.GetArrayViewFromImage(mask), sitk.GetArrayViewFromImage(expected))
        assert served.client.call("DELETE", f"/sessions/{sessions[case]}").status == 204
    assert images[CASES[0]].GetSize() != images[CASES[1]].GetSize()  # two different volumes, really


def centre_of(image: sitk.Image) -> list[float]:
    x, y, z = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    return [-x, -y, z]


def test_delete_removes_the_session_and_its_files(served, tmp_path):
    session = served.client.upload(CASE).body["session"]
    report = served.client.interact(session, positive=[CLICK], uncertainty=True).body["report"]
    folder = Path(report["input"]).parent
    assert folder.is_dir() and Path(report["uncertainty"]).is_file() and folder.parent == served.context.store.root
    assert served.client.call("DELETE", f"/sessions/{session}").status == 204
    assert not folder.exists()
    assert served.client.interact(session, positive=[CLICK]).status == 404
    assert served.client.call("DELETE", f"/sessions/{session}").status == 404


def test_uploads_plain_gzip_and_refused(served, tmp_path):
    nrrd = tmp_path / "volume.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(CASE)), str(nrrd), False)
    answer = served.client.upload(nrrd, gzipped=True)
    assert answer.status == 201 and answer.body["size"] == list(sitk.ReadImage(str(CASE)).GetSize())
    served.client.call("DELETE", f"/sessions/{answer.body['session']}")
    answer = served.client.upload(nrrd, name="volume.exe")
    assert answer.status == 400 and "name the file with one of" in answer.error
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(CASE.read_bytes()[: 2000])
    answer = served.client.upload(broken)
    assert answer.status == 400 and answer.error.startswith("cad serve: error: ") and "input.nii.gz" in answer.error
    assert len(served.context.store) == 0


def test_limits_too_large_gzip_bomb(served, tmp_path):
    big = tmp_path / "big.nrrd"
    big.write_bytes(b"\0" * (2 * 2 ** 20))  # over --max-upload-mb 1
    answer = served.client.upload(big)
    assert answer.status == 413 and "--max-upload-mb" in answer.error
    bomb = gzip.compress(b"\0" * (64 * 2 ** 20))  # 64 MB of zeros in ~64 kB
    assert len(bomb) < 2 ** 20
    answer = served.client.call("POST", "/sessions?name=bomb.nrrd", bomb, {"Content-Encoding": "gzip"})
    assert answer.status == 413 and "inflated" in answer.error
    session = served.client.upload(CASE).body["session"]
    scribble = {"name": "s.nrrd", "data": base64.b64encode(bomb).decode()}
    answer = served.client.interact(session, positive=[CLICK], scribble=scribble)
    assert answer.status == 413 and "'scribble' (inflated)" in answer.error
    served.client.call("DELETE", f"/sessions/{session}")
    assert len(served.context.store) == 0 and list(served.context.store.root.iterdir()) == []


def test_scribble_and_previous_travel_as_files(served, session, tmp_path):
    truth = sitk.ReadImage(str(TRUTH))
    previous = sitk.Cast(truth == 1, sitk.sitkUInt8)
    sitk.WriteImage(previous, str(tmp_path / "previous.nrrd"))
    answer = served.client.interact(session, positive=[CLICK], previous=as_file(tmp_path / "previous.nrrd"))
    assert answer.status == 200 and answer.body["report"]["prompts"]["previous"] is True
    shifted = sitk.Image(previous)
    shifted.SetOrigin([v + 3.0 for v in previous.GetOrigin()])
    sitk.WriteImage(shifted, str(tmp_path / "shifted.nrrd"))
    answer = served.client.interact(session, positive=[CLICK], previous=as_file(tmp_path / "shifted.nrrd"))
    assert answer.status == 400 and answer.error.startswith("cad interact: error: ") and "grid" in answer.error


def test_too_many_sessions_expiry_and_busy(tmp_path):
    with running_server(tmp_path, max_sessions=2, session_ttl=0.6, job_timeout=0.3) as running:
        client = running.client
        first, second = (client.upload(CASE).body["session"] for _ in range(2))
        answer = client.upload(CASE)
        assert answer.status == 429 and "--max-sessions" in answer.error
        with running.context.slot.lock:  # another job holds the engine past --job-timeout
            answer = client.interact(first, positive=[CLICK])
        assert answer.status == 503 and "busy" in answer.error
        folder = Path(client.interact(first, positive=[CLICK]).body["report"]["input"]).parent
        deadline = time.monotonic() + 10
        while folder.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not folder.exists()  # the sweep removed it, with no request to trigger it
        assert client.interact(first, positive=[CLICK]).status == 404
        assert client.interact(second, positive=[CLICK]).status == 404
        assert client.upload(CASE).status == 201  # room again
    assert not running.context.store.root.exists()  # shutdown removed every session folder


def test_segment_equals_cad_segment(served, session, tmp_path, capsys):
    answer = served.client.post_json(f"/sessions/{session}/segment", {"model": MODEL})
    assert answer.status == 200, answer.body
    output = tmp_path / "cli.seg.nrrd"
    assert main(["segment", str(CASE), "-m", MODEL, "-o", str(output), "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    served_labels, cli_labels = read_file(answer.body["labelmap"], tmp_path), sitk.ReadImage(str(output))
    assert same_grid(served_labels, cli_labels)
    assert np.array_equal(sitk.GetArrayViewFromImage(served_labels), sitk.GetArrayViewFromImage(cli_labels))
    cli_report = json.loads(Path(f"{output}.json").read_text())
    assert answer.body["report"]["labels"] == cli_report["labels"]
    answer = served.client.post_json(f"/sessions/{session}/segment", {"model": MODEL, "overlap": 1.5})
    assert answer.status == 400 and answer.error == "cad segment: error: --overlap must be in [0, 1), got 1.5"


def test_classify_refusals_are_the_cli_lines(served, session):
    answer = served.client.post_json(f"/sessions/{session}/classify", {"model": MODEL, "center": CLICK})
    assert answer.status == 400 and "cad classify needs a classification model" in answer.error
    answer = served.client.post_json(f"/sessions/{session}/classify",
                                     {"model": "adrenal-resnet", "center": CLICK, "mask": {"name": "m.nrrd",
                                                                                           "data": ""}})
    assert answer.status == 400 and answer.error == \
        "cad classify: error: give either --mask/--label or --center/--size, not both"


def test_unknown_session_is_404(served):
    answer = served.client.interact("no-such-session", positive=[CLICK])
    assert answer.status == 404 and "unknown or expired session" in answer.error



def test_a_session_deleted_while_in_use_keeps_its_folder_until_the_request_ends(served):
    store = served.context.store
    session = store.reserve()  # as an upload holds it
    assert session.folder.is_dir()
    assert store.remove(session.id) and session.folder.is_dir()  # a request still writes there
    store.release(session)
    assert not session.folder.exists() and not store.remove(session.id)


def test_a_truncated_or_false_gzip_upload_is_refused(served):
    packed = gzip.compress(CASE.read_bytes() * 2)
    for data, expected in ((packed[: len(packed) // 2], "the gzip stream is truncated"),
                           (b"not gzip at all", "not a valid gzip stream")):
        answer = served.client.call("POST", "/sessions?name=v.nii.gz", data, {"Content-Encoding": "gzip"})
        assert answer.status == 400 and expected in answer.error, answer.body
    assert len(served.context.store) == 0


def test_classify_equals_cad_classify(served, session, tmp_path, capsys):
    answer = served.client.post_json(f"/sessions/{session}/classify", {"model": "adrenal-resnet",
                                                                       "mask": as_file(TRUTH)})
    assert answer.status == 200, answer.body
    output = tmp_path / "cli.json"
    assert main(["classify", str(CASE), "-m", "adrenal-resnet", "--mask", str(TRUTH), "-o", str(output),
                 "--device", "cpu"]) == 0, capsys.readouterr().err
    report, cli_report = answer.body["report"], json.loads(output.read_text())
    assert set(report) == set(cli_report)
    for key in ("probabilities", "probabilities_uncalibrated", "predicted", "temperature"):
        assert report[key] == cli_report[key], key
    assert {k: v for k, v in report["roi"].items() if "source" not in k} == \
        {k: v for k, v in cli_report["roi"].items() if "source" not in k}
