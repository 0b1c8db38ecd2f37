"""Which engine answers the CAD AI effect's prompts: a remote server, a local warm server, or the command line.

The choice the issue asks for, in one place: a remote server when the CAD Extension settings name one (URL + token
file), else a local ``cad serve`` started with Slicer's Python on first use (in a background thread, so activating the
effect never freezes Slicer), and the command line (``python -m cadcore interact``) while neither answers or when
the server failed to start. One :class:`~CADSegmentLib.PromptLogic.PromptLogic` is kept for all prompts, so the
volume file and the server session are reused; its backend is switched to the server as soon as the server answers.

The settings themselves are Qt's (the effect reads them and calls :meth:`PromptEngine.configure`); this file imports
``slicer``/``vtk`` (through CADExtensionLib) and the standard library only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from CADExtensionLib.engine_server import (
    SERVER_TOKEN_FILE_SETTING,
    SERVER_URL_SETTING,
    EngineServerClient,
    EngineServerError,
    LocalEngineServer,
)

from CADSegmentLib.PromptBackends import CommandBackend, VolumeFileCache
from CADSegmentLib.ServerBackend import ServerBackend

__all__ = ["SERVER_TOKEN_FILE_SETTING", "SERVER_URL_SETTING", "PromptEngine", "sharedEngine", "stopSharedEngine"]


class PromptEngine:
    """States: ``idle`` → ``starting`` → ``ready`` (server answers) or ``failed`` (command line from then on)."""

    def __init__(self, localServerFactory: Callable[[], LocalEngineServer] = LocalEngineServer,
                 remoteClientFactory: Callable[[str, str], EngineServerClient] = EngineServerClient.fromTokenFile,
                 ) -> None:
        self._localServerFactory = localServerFactory
        self._remoteClientFactory = remoteClientFactory
        self._remote = ("", "")
        self._local: LocalEngineServer | None = None
        self._client: EngineServerClient | None = None
        self._state, self._message = "idle", ""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._volumeFiles = VolumeFileCache()
        self._serverBackend: ServerBackend | None = None
        self._commandBackend: CommandBackend | None = None
        self._logic = None

    def configure(self, remoteUrl: str = "", remoteTokenFile: str = "") -> None:
        """A remote server (both given) or the local one (neither); a change drops the current connection."""
        remote = (remoteUrl.strip(), remoteTokenFile.strip())
        if remote == self._remote:
            return
        self.stop()
        self._remote = remote

    def warmUp(self, wait: bool = False) -> None:
        """Connect (remote) or start (local) the server in a background thread; ``wait`` blocks until it settled."""
        with self._lock:
            if self._state in ("idle",):
                self._state, self._message = "starting", ""
                self._thread = threading.Thread(target=self._connect, name="CAD engine server start", daemon=True)
                self._thread.start()
            thread = self._thread
        if wait and thread is not None:
            thread.join()

    def _connect(self) -> None:
        try:
            url, tokenFile = self._remote
            if url:
                client = self._remoteClientFactory(url, tokenFile)
                client.health()
            else:
                self._local = self._localServerFactory()
                client = self._local.client()
        except (EngineServerError, OSError, ValueError) as exc:
            logging.warning("CAD AI: no engine server (%s); prompts run through the command line", exc)
            with self._lock:
                self._state, self._message = "failed", str(exc)
            return
        with self._lock:
            self._client = client
            self._serverBackend = ServerBackend(client, self._volumeFiles)
            self._state = "ready"

    def settled(self) -> bool:
        return self._state in ("ready", "failed")

    def statusText(self) -> str:
        where = self._remote[0] or "local"
        return {"idle": "command line (server not started)",
                "starting": f"starting the {where} server… (command line meanwhile)",
                "ready": f"warm server ({where}: {self._client.url if self._client else ''})",
                "failed": f"command line (server failed: {self._message})"}[self._state]

    def backend(self):
        """The server's backend when it answers, else the command line's (both reuse one volume file cache)."""
        if self._state == "ready" and self._serverBackend is not None:
            return self._serverBackend
        if self._commandBackend is None:
            self._commandBackend = CommandBackend()
            self._commandBackend.volumes = self._volumeFiles  # one exported file per volume for both paths
        return self._commandBackend

    def promptLogic(self, writer=None):
        """The one PromptLogic of the effect, with the current backend and the effect's write step."""
        from CADSegmentLib.PromptLogic import PromptLogic

        if self._logic is None:
            self._logic = PromptLogic(backend=self.backend(), writer=writer)
        else:
            self._logic.backend = self.backend()
            self._logic.writer = writer
        return self._logic

    def stop(self) -> None:
        """Stop a local server, free remote sessions and files; the next :meth:`warmUp` starts over."""
        with self._lock:
            backend, local = self._serverBackend, self._local
            self._serverBackend, self._local, self._client = None, None, None
            self._state, self._message = "idle", ""
        if backend is not None:
            backend.close()
        if local is not None:
            local.stop()
        if self._logic is not None:
            self._logic.backend = self.backend()


_shared: PromptEngine | None = None


def sharedEngine() -> PromptEngine:
    """The application's one engine (every Segment Editor widget's effect shares the warm server)."""
    global _shared
    if _shared is None:
        _shared = PromptEngine()
    return _shared


def stopSharedEngine() -> None:
    if _shared is not None:
        _shared.stop()
