"""The warm engine from the Slicer side: a client for ``cad serve`` and the local server Slicer starts on first use.

Why: a prompt through ``python -m cadcore interact`` pays for starting Python, importing torch and reading the
volume every time (seconds); ``cad serve`` keeps the model, the volume and its working-space copy between prompts.
The server's HTTP contract is docs/server.md; this file speaks it with the standard library only (urllib, gzip,
base64), so the glue still runs on the ``slicer-core`` wheel and needs no ``requests``.

* :class:`EngineServerClient` is one server (local or remote): every request carries the bearer token, errors come
  back as :class:`EngineServerError` holding the engine's one-line message.
* :class:`LocalEngineServer` starts ``python -m cadcore serve --port 0`` with Slicer's Python, on loopback, with a
  fresh token in a private (0600) file it created, waits for the server's ready file, and stops it (process tree and
  files) on :meth:`LocalEngineServer.stop` or at interpreter exit.
"""

from __future__ import annotations

import atexit
import base64
import gzip
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from CADExtensionLib.command import ENGINE_MODULE, engineEnvironment, engineFolder
from CADExtensionLib.process import killProcessTree, pythonExecutable

SERVER_URL_SETTING = "CADExtension/ServerURL"
"""QSettings key of a remote server's URL (empty: start a local server)."""
SERVER_TOKEN_FILE_SETTING = "CADExtension/ServerTokenFile"
"""QSettings key of the file holding the remote server's token (never the token itself: settings are plain text)."""
MAX_ANSWER_BYTES = 1 << 30
"""A decoded answer file larger than this is refused: a mask of the user's own volume is far smaller compressed."""


class EngineServerError(RuntimeError):
    """A request the server refused or could not serve; ``str()`` is the engine's one line (as the CLI prints it)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def encodeFile(path: str | os.PathLike[str]) -> dict[str, str]:
    """A file as the contract's ``{"name", "data"}``: base64 of its gzip-compressed bytes (the name gives only the
    format; the server never uses it as a path)."""
    path = Path(path)
    return {"name": path.name, "data": base64.b64encode(gzip.compress(path.read_bytes(), compresslevel=1)).decode()}


def decodeFile(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a ``{"name", "data"}`` answer to ``path`` (a file of the caller's workspace); its size is capped."""
    data = gzip.decompress(base64.b64decode(str(payload["data"]), validate=True))
    if len(data) > MAX_ANSWER_BYTES:
        raise EngineServerError(f"the server's {payload.get('name', 'file')!r} is larger than {MAX_ANSWER_BYTES} bytes")
    path = Path(path)
    path.write_bytes(data)
    return path


class EngineServerClient:
    """One ``cad serve`` server: ``health()``, ``models()``, ``upload(path)``, ``interact(...)``, ``segment(...)``,
    ``deleteSession(id)``. ``timeout`` bounds each request (a prompt on a CPU takes seconds, an upload of a large CT
    more)."""

    def __init__(self, url: str, token: str, timeout: float = 600.0) -> None:
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) server URL: {url!r}")
        self.url = url.rstrip("/")
        self._token = token.strip()
        self.timeout = timeout

    @classmethod
    def fromTokenFile(cls, url: str, tokenFile: str | os.PathLike[str], timeout: float = 600.0
                      ) -> EngineServerClient:
        """A remote server from the settings: its URL and the file holding its token."""
        try:
            token = Path(tokenFile).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise EngineServerError(f"{tokenFile}: cannot read the server token ({exc.strerror or exc})") from exc
        if not token:
            raise EngineServerError(f"{tokenFile}: the server token file is empty")
        return cls(url, token, timeout)

    def _request(self, method: str, path: str, body: bytes | Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float | None = None) -> dict[str, Any]:
        allHeaders = {"Authorization": f"Bearer {self._token}", **(headers or {})}
        data = None
        if isinstance(body, Mapping):
            data = json.dumps(body).encode()
            allHeaders["Content-Type"] = "application/json"
        elif body is not None:
            data = body
        request = urllib.request.Request(self.url + path, data=data, headers=allHeaders, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise EngineServerError(_errorLine(exc.read(), f"HTTP {exc.code} {exc.reason}"), exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise EngineServerError(f"cannot reach the CAD engine server at {self.url} ({reason})") from None
        return json.loads(text) if text else {}

    def health(self, timeout: float = 10.0) -> dict[str, Any]:
        return self._request("GET", "/health", timeout=timeout)

    def models(self) -> list[dict[str, Any]]:
        return list(self._request("GET", "/models").get("models", []))

    def upload(self, volumePath: str | os.PathLike[str]) -> dict[str, Any]:
        """Start a session on a volume file (sent once, gzip-compressed); returns ``{"session", "size", ...}``."""
        volumePath = Path(volumePath)
        body = gzip.compress(volumePath.read_bytes(), compresslevel=1)
        query = urllib.parse.urlencode({"name": volumePath.name})
        return self._request("POST", f"/sessions?{query}", body, {"Content-Type": "application/octet-stream",
                                                                   "Content-Encoding": "gzip"})

    def interact(self, sessionId: str, request: Mapping[str, Any]) -> dict[str, Any]:
        return self._request("POST", f"/sessions/{_sessionPath(sessionId)}/interact", request)

    def segment(self, sessionId: str, request: Mapping[str, Any]) -> dict[str, Any]:
        return self._request("POST", f"/sessions/{_sessionPath(sessionId)}/segment", request)

    def deleteSession(self, sessionId: str) -> None:
        try:
            self._request("DELETE", f"/sessions/{_sessionPath(sessionId)}", timeout=10.0)
        except EngineServerError as exc:
            if exc.status != 404:  # already expired: nothing to delete
                raise


def _sessionPath(sessionId: str) -> str:
    if not sessionId or not all(c.isalnum() or c in "-_" for c in sessionId):
        raise ValueError(f"not a session id: {sessionId!r}")
    return sessionId


def _errorLine(body: bytes, fallback: str) -> str:
    try:
        return str(json.loads(body)["error"]).strip().splitlines()[0]
    except (ValueError, KeyError, TypeError, IndexError):
        return fallback


class LocalEngineServer:
    """``cad serve`` on loopback, started with Slicer's Python on first use and stopped at exit.

    The token is made here and written to a 0600 file in a private (0700) folder that only this user can read; the
    server reads it from there (``--token-file``) and writes its URL to ``--ready-file`` once it listens.
    """

    def __init__(self, python: str | None = None, engineFolderPath: str | os.PathLike[str] | None = None,
                 startTimeout: float = 180.0, extraArgs: tuple[str, ...] = ()) -> None:
        self.python = python
        self.engineFolder = Path(engineFolderPath) if engineFolderPath else engineFolder()
        self.startTimeout = startTimeout
        self.extraArgs = tuple(extraArgs)
        self._process: subprocess.Popen | None = None
        self._folder: Path | None = None
        self._client: EngineServerClient | None = None

    def isRunning(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self) -> EngineServerClient:
        """The running server's client, starting the server first if needed (blocks until it listens)."""
        if self._client is None or not self.isRunning():
            self.start()
        assert self._client is not None
        return self._client

    def start(self) -> EngineServerClient:
        self.stop()
        folder = Path(tempfile.mkdtemp(prefix="CADExtension-server-"))  # mkdtemp: mode 0700
        token = secrets.token_urlsafe(32)
        tokenFile, readyFile, logFile = folder / "token", folder / "ready.json", folder / "server.log"
        descriptor = os.open(tokenFile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
            stream.write(token + "\n")
        argv = [self.python or pythonExecutable(), "-m", ENGINE_MODULE, "serve", "--host", "127.0.0.1", "--port", "0",
                "--token-file", str(tokenFile), "--ready-file", str(readyFile), *self.extraArgs]
        env = {**os.environ, **engineEnvironment(self.engineFolder, os.environ.get("PYTHONPATH"))}
        with open(logFile, "wb") as log:
            self._process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                             stderr=subprocess.STDOUT, start_new_session=True)
        self._folder = folder
        atexit.register(self.stop)
        deadline = time.monotonic() + self.startTimeout
        while not readyFile.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                lines = [line for line in logFile.read_text(errors="replace").splitlines() if line.strip()]
                self.stop()
                why = lines[-1] if lines else f"no answer within {self.startTimeout:g} s"
                raise EngineServerError(f"the local CAD engine server did not start: {why}")
            time.sleep(0.05)
        ready = json.loads(readyFile.read_text(encoding="utf-8"))
        self._client = EngineServerClient(str(ready["url"]), token)
        return self._client

    def stop(self) -> None:
        """Stop the server (its whole process tree) and remove the token and ready files. Safe to call twice."""
        process, self._process, self._client = self._process, None, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                killProcessTree(process.pid)
                process.wait(10)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
