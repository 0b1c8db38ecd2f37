"""Run the app under uvicorn on one socket, and announce it: the ready file is written (atomically) only once the
socket listens, with the real port (``--port 0`` = any free one), so a client polling that file never races the
start. The session folders are removed at shutdown (SIGINT/SIGTERM end uvicorn gracefully)."""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cadcore.errors import CadError


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    max_sessions: int = 4
    models_memory_gb: float = 4.0
    session_ttl: float = 1800.0
    max_upload_mb: float = 2048.0
    job_timeout: float = 600.0
    ready_file: Path | None = None


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write_ready_file(path: Path, url: str, version: str) -> None:
    """``{"url", "pid", "version"}`` written to a temporary name and renamed: a reader sees all of it or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid(), "version": version}))
    os.replace(tmp, path)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so a busy port or an unknown host is the command's one line (exit 2)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise CadError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    sock.set_inheritable(True)
    return sock


def build_server(app: Any, options: ServeOptions, version: str) -> tuple[Any, socket.socket]:
    """The uvicorn server (announcing itself once listening) and its bound socket: ``server.run(sockets=[sock])``
    serves until ``server.should_exit`` (set by SIGINT/SIGTERM in the main thread, or by a caller)."""
    import uvicorn

    sock = bind(options.host, options.port)
    ready_file = options.ready_file

    class Announcing(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.should_exit:
                return
            url = url_of(options.host, sock.getsockname()[1])
            print(f"cad serve: listening on {url}", flush=True)
            if ready_file is not None:
                write_ready_file(ready_file, url, version)

    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
                            limit_concurrency=64, lifespan="on")
    return Announcing(config), sock


def serve(app: Any, options: ServeOptions, version: str) -> None:
    """Serve until interrupted; the ready file is removed at the end (when it is still this process's)."""
    server, sock = build_server(app, options, version)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        ready_file = options.ready_file
        if ready_file is not None and ready_file.is_file():
            try:
                if json.loads(ready_file.read_text()).get("pid") == os.getpid():
                    ready_file.unlink()
            except (OSError, ValueError):
                pass
    sys.stdout.flush()
