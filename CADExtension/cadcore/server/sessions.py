"""Sessions: one uploaded volume each, in a private temporary folder, with the warm interactive sessions on it.

A session id is a random name (``secrets.token_urlsafe(16)``), only ever a key of this store, never a path. A session
unused for ``ttl`` seconds expires: checked on every request and by a periodic sweep, and never while a request is
using it; its folder and its warm models' region outputs go with it. The store is thread-safe (requests run in a
thread pool).
"""

from __future__ import annotations

import itertools
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from cadcore.server.payloads import ApiError


@dataclass
class Session:
    id: str
    folder: Path
    last_used: float
    input: Path | None = None  # the uploaded volume (``input<suffix>`` in ``folder``)
    image: sitk.Image | None = None  # read once, at upload
    busy: int = 0  # requests using it now: it does not expire under them
    removed: bool = False  # deleted while in use: its folder goes when the last request ends
    warm: dict[tuple[str, str], Any] = field(default_factory=dict)  # (model id, folder) → InteractiveSession
    names: Iterator[int] = field(default_factory=itertools.count)  # numbers the files written for answers

    def new_name(self, stem: str, suffix: str) -> Path:
        return self.folder / f"{stem}-{next(self.names)}{suffix}"


class SessionStore:
    def __init__(self, max_sessions: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions, self.ttl, self.clock = max_sessions, ttl, clock
        self.root = Path(tempfile.mkdtemp(prefix="cad-serve-"))  # 0700: only this user reads the uploads
        self.sessions: dict[str, Session] = {}
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.sessions)

    def reserve(self) -> Session:
        """A new, empty session (its folder made), or 429 when ``max_sessions`` are open (after expiring old ones)."""
        self.expire()
        with self.lock:
            if len(self.sessions) >= self.max_sessions:
                raise ApiError(429, f"cad serve: error: too many sessions ({self.max_sessions} open, "
                                    f"--max-sessions); delete one or wait for one to expire")
            session_id = secrets.token_urlsafe(16)
            folder = Path(tempfile.mkdtemp(prefix="session-", dir=self.root))
            session = Session(session_id, folder, self.clock(), busy=1)  # busy until its upload is read
            self.sessions[session_id] = session
        return session

    def release(self, session: Session) -> None:
        with self.lock:
            session.busy -= 1
            session.last_used = self.clock()
            last = session.removed and session.busy == 0
        if last:
            self.discard(session)

    @contextmanager
    def using(self, session_id: str) -> Iterator[Session]:
        """The session, held (no expiry) for the length of a request; 404 when unknown or expired."""
        self.expire()
        with self.lock:
            session = self.sessions.get(session_id)
            if session is None or session.image is None:
                raise ApiError(404, f"cad serve: error: session {session_id[:64]}: unknown or expired session "
                                    f"(upload the volume again)")
            session.busy += 1
            session.last_used = self.clock()
        try:
            yield session
        finally:
            self.release(session)

    def remove(self, session_id: str) -> bool:
        """Drop a session (later requests get 404) and its folder, at once or, while a request still uses it, when
        that request ends; False when there was none."""
        with self.lock:
            session = self.sessions.pop(session_id, None)
            if session is None:
                return False
            session.removed = True
            idle = session.busy == 0
        if idle:
            self.discard(session)
        return True

    @staticmethod
    def discard(session: Session) -> None:
        session.warm.clear()
        shutil.rmtree(session.folder, ignore_errors=True)

    def expire(self) -> list[str]:
        """Remove every session idle longer than ``ttl``; the ids removed."""
        now = self.clock()
        with self.lock:
            stale = [s.id for s in self.sessions.values() if s.busy == 0 and now - s.last_used > self.ttl]
        for session_id in stale:
            self.remove(session_id)
        return stale

    def drop_model(self, key: tuple[str, str]) -> None:
        """Forget the warm interactive sessions of a model the cache let go (their networks and region outputs)."""
        with self.lock:
            for session in self.sessions.values():
                session.warm.pop(key, None)

    def close(self) -> None:
        """At shutdown: every folder goes, in use or not (no request outlives the server)."""
        with self.lock:
            sessions, self.sessions = list(self.sessions.values()), {}
        for session in sessions:
            self.discard(session)
        shutil.rmtree(self.root, ignore_errors=True)


class Sweeper:
    """A daemon thread that expires idle sessions every ``period`` seconds until stopped."""

    def __init__(self, store: SessionStore, period: float) -> None:
        self.store, self.period = store, period
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.loop, name="cad-serve-sweeper", daemon=True)

    def loop(self) -> None:
        while not self.stopped.wait(self.period):
            self.store.expire()

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def sweep_period(ttl: float) -> float:
    """How often the sweep looks: a quarter of the ttl (so a session outlives it by at most that), 30 s at most."""
    return min(30.0, max(0.05, ttl / 4))
