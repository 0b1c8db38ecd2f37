"""The CAD AI effect's warm path from the Slicer side, against a REAL ``cad serve`` on loopback started the way Slicer
starts it (``LocalEngineServer``: Slicer's Python, a private 0600 token, the ready file): the segment written through
the server equals the one written through the command line; a volume is uploaded once for many prompts and again
after an edit or an expired session; the server's refusal is the engine's one line and changes nothing; a wrong
token is refused; the engine choice falls back to the command line when no server answers."""

from __future__ import annotations

import stat
import sys
import time

import numpy as np
import pytest
from CADExtensionLib.engine_server import EngineServerClient, EngineServerError, LocalEngineServer
from CADSegmentLib import InProcessRunner, PromptLogic
from CADSegmentLib.PromptBackends import CommandBackend
from CADSegmentLib.PromptEngine import PromptEngine
from CADSegmentLib.ServerBackend import ServerBackend

from .conftest import REPO
from .prompt_support import addSegmentation, segmentWorldPoints
from .test_prompt_engine import CASE, MODEL, moved_case  # noqa: F401 (fixture)

pytest.importorskip("fastapi", reason="cad serve needs fastapi and uvicorn (pyproject dependencies)")


@pytest.fixture(scope="module")
def local_server():
    """One real server for the module (starting one imports torch: seconds); sessions expire after 3 s."""
    server = LocalEngineServer(python=sys.executable, engineFolderPath=REPO / "CADExtension",
                               extraArgs=("--session-ttl", "3", "--device", "cpu"))
    client = server.start()
    yield server, client
    folder = server._folder
    server.stop()
    assert not server.isRunning() and not folder.exists()  # token and ready files gone with it


def test_local_server_is_loopback_with_a_private_token(local_server):
    server, client = local_server
    assert client.url.startswith("http://127.0.0.1:")
    token = server._folder / "token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and stat.S_IMODE(server._folder.stat().st_mode) == 0o700
    assert client.health()["status"] == "ok"
    assert MODEL in {entry["id"] for entry in client.models()}
    intruder = EngineServerClient(client.url, "not-the-token-" * 3)
    with pytest.raises(EngineServerError) as refused:
        intruder.health()
    assert refused.value.status == 401 and "\n" not in str(refused.value)


def test_server_prompt_equals_command_prompt_and_uploads_once(local_server, moved_case, tmp_path):  # noqa: F811
    _server, client = local_server
    volume, segmentation, segmentId, _local, world = moved_case
    other, (otherId,) = addSegmentation(volume, ("Prompted structure",))
    viaCommand = PromptLogic(runner=InProcessRunner(), device="cpu", temporaryFolder=tmp_path)
    viaCommand.run(volume, other, otherId, model=MODEL, positivePoints=[world.tolist()])
    backend = ServerBackend(client)
    viaServer = PromptLogic(backend=backend, temporaryFolder=tmp_path)
    report = viaServer.run(volume, segmentation, segmentId, model=MODEL, positivePoints=[world.tolist()])
    expected = segmentWorldPoints(other, otherId)
    written = segmentWorldPoints(segmentation, segmentId)
    assert len(written) == len(expected) == report["voxels"] > 100
    assert np.allclose(np.sort(written, axis=0), np.sort(expected, axis=0), atol=1e-3)

    corrective = (world + [0.0, 0.0, 2.0]).tolist()
    second = viaServer.run(volume, segmentation, segmentId, model=MODEL, positivePoints=[world.tolist()],
                           negativePoints=[corrective], refine=True)
    assert backend.uploads == 1 and len(second["prompts"]["negative"]) == 1  # the volume went once
    viaServer.editorLogic.Undo()
    assert len(segmentWorldPoints(segmentation, segmentId)) == len(expected)  # one prompt = one undo step

    import slicer

    slicer.util.arrayFromVolume(volume)[0, 0, 0] += 1.0  # edited voxels: uploaded again
    slicer.util.arrayFromVolumeModified(volume)
    viaServer.run(volume, segmentation, segmentId, model=MODEL, positivePoints=[world.tolist()])
    assert backend.uploads == 2
    time.sleep(4.5)  # past --session-ttl: the server forgot the volume; the backend uploads it again, once
    viaServer.run(volume, segmentation, segmentId, model=MODEL, positivePoints=[world.tolist()])
    assert backend.uploads == 3
    viaServer.cleanup()
    viaCommand.cleanup()


def test_server_refusal_is_the_engines_line_and_changes_nothing(local_server, moved_case, tmp_path):  # noqa: F811
    _server, client = local_server
    volume, segmentation, segmentId, _local, world = moved_case
    logic = PromptLogic(backend=ServerBackend(client), temporaryFolder=tmp_path)
    with pytest.raises(RuntimeError) as failure:
        logic.run(volume, segmentation, segmentId, model=MODEL, positivePoints=[[9999.0, 0.0, 0.0]])
    message = str(failure.value)
    assert message.startswith("cad interact: error: ") and "outside the volume" in message and "\n" not in message
    with pytest.raises(RuntimeError, match="not one of the model's labels"):
        logic.run(volume, segmentation, segmentId, model=MODEL, label=7, positivePoints=[world.tolist()])
    assert len(segmentWorldPoints(segmentation, segmentId)) == 0 and not logic.editorLogic.CanUndo()
    logic.cleanup()


def test_engine_choice_falls_back_to_the_command_line(tmp_path):
    engine = PromptEngine(localServerFactory=lambda: (_ for _ in ()).throw(AssertionError("no local server")))
    token = tmp_path / "token"
    token.write_text("x" * 32)
    engine.configure("http://127.0.0.1:9", str(token))  # nothing listens on the discard port
    engine.warmUp(wait=True)
    assert engine.settled() and "failed" in engine.statusText()
    assert isinstance(engine.backend(), CommandBackend)
    logic = engine.promptLogic(writer=None)
    assert isinstance(logic.backend, CommandBackend) and engine.promptLogic() is logic  # one logic for all prompts
    engine.stop()
    assert engine.statusText().startswith("command line")


def test_engine_choice_uses_the_local_server_once_it_answers(local_server):
    server, client = local_server

    class Started:
        def client(self):
            return client

        def stop(self):
            pass

    engine = PromptEngine(localServerFactory=Started)
    engine.configure("", "")
    engine.warmUp(wait=True)
    assert engine.statusText().startswith("warm server")
    writes = []
    logic = engine.promptLogic(writer=lambda *args: writes.append(args))
    assert isinstance(logic.backend, ServerBackend) and logic.writer is not None
    engine.stop()
    assert isinstance(logic.backend, CommandBackend)  # a stopped server: prompts go back to the command line
