"""A prompt computed by a warm ``cad serve`` (local or remote): the :class:`PromptBackend` of the fast path.

Why a server: ``python -m cadcore interact`` pays for Python, torch and reading the volume on every prompt (seconds);
the server keeps the model, the volume and its working-space copy, so a prompt costs the network on the region only.
Each volume node is uploaded once (gzip-compressed) and its session reused while the node's voxels and geometry are
unchanged (the same :class:`VolumeFileCache` key the command path uses); a session the server let expire is
re-uploaded once, transparently. Errors are the engine's one line, as on the command path.

Imports ``slicer``/``vtk`` (through CADExtensionLib) and the standard library only.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from CADExtensionLib.engine_server import EngineServerClient, EngineServerError, decodeFile, encodeFile

from CADSegmentLib.PromptBackends import PromptAnswer, PromptRequest, VolumeFileCache

ANSWER_SUFFIXES = (".nrrd", ".nii.gz", ".nii", ".mha")


def _answerPath(workspace: Path, stem: str, payload: dict[str, Any]) -> Path:
    """Where an answer file goes: our own name in our workspace; the server's name only chooses the format."""
    name = str(payload.get("name", "")).lower()
    suffix = next((s for s in ANSWER_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise RuntimeError(f"the server answered a file of unknown format {payload.get('name')!r}")
    return workspace / f"{stem}{suffix}"


class ServerBackend:
    """``interact`` through :class:`EngineServerClient`; one server session per volume node."""

    def __init__(self, client: EngineServerClient, volumeFiles: VolumeFileCache | None = None) -> None:
        self.client = client
        self.volumeFiles = volumeFiles if volumeFiles is not None else VolumeFileCache()
        self._sessions: dict[str, tuple[Path, str]] = {}  # volume node ID → (uploaded file, session id)
        self._lock = threading.Lock()
        self.uploads = 0  # how many volumes were sent (tests and the latency benchmark read it)

    def prepareVolume(self, volumeNode) -> Path:
        """The node's file (exported only when it changed): on the main thread, as MRML must be read there."""
        return self.volumeFiles.path(volumeNode)

    def _session(self, volumeNode, volumePath: Path, renew: bool = False) -> str:
        nodeId = volumeNode.GetID()
        with self._lock:
            known = self._sessions.get(nodeId)
            if known is not None and known[0] == volumePath and not renew:
                return known[1]
            if known is not None:
                self._forget(known[1])
            sessionId = str(self.client.upload(volumePath)["session"])
            self.uploads += 1
            self._sessions[nodeId] = (volumePath, sessionId)
            return sessionId

    def _forget(self, sessionId: str) -> None:
        try:
            self.client.deleteSession(sessionId)
        except EngineServerError:
            pass  # the server is gone or the session expired: nothing left to free

    def interact(self, volumeNode, request: PromptRequest, previousPath: Path | None, scribblePath: Path | None,
                 workspace: Path) -> PromptAnswer:
        volumePath = self.prepareVolume(volumeNode)
        body = {
            "model": request.model, "label": int(request.label),
            "positive": [list(p) for p in request.positive], "negative": [list(p) for p in request.negative],
            "box": list(request.box) if request.box else None,
            "scribble": encodeFile(scribblePath) if scribblePath else None,
            "previous": encodeFile(previousPath) if previousPath else None,
            "uncertainty": bool(request.uncertainty),
        }
        sessionId = self._session(volumeNode, volumePath)
        try:
            answer = self.client.interact(sessionId, body)
        except EngineServerError as exc:
            if exc.status != 404:  # only an expired session is worth a second try
                raise
            answer = self.client.interact(self._session(volumeNode, volumePath, renew=True), body)
        workspace = Path(workspace)
        maskPath = decodeFile(answer["mask"], _answerPath(workspace, "mask", answer["mask"]))
        uncertainty = answer.get("uncertainty")
        uncertaintyPath = decodeFile(uncertainty, _answerPath(workspace, "uncertainty", uncertainty)) \
            if uncertainty else None
        return PromptAnswer(maskPath, dict(answer.get("report") or {}), uncertaintyPath)

    def cancel(self) -> None:
        """A prompt already sent finishes on the server (one region: seconds at most); its answer is dropped."""

    def close(self) -> None:
        """Free the server's sessions and our exported files."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for _path, sessionId in sessions:
            self._forget(sessionId)
        self.volumeFiles.clear()
