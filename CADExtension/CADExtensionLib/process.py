"""Running the engine in a background process: start, stream output, report progress, cancel the whole tree.

Why a separate process (as MONAIAuto3DSeg, TotalSegmentator and SlicerNNUnet do): torch/MONAI stay out of Slicer's
interpreter, a crash cannot take the application down, and cancel can really stop the work (a thread cannot be
killed). The runner is a ``typing.Protocol`` so the Logic can be driven by a fake or in-process runner in tests
(SlicerNNUnet's injected-process pattern).

Callbacks of :class:`SubprocessRunner` run on its reader thread unless ``deferCallbacks=True``; then they are queued
and delivered by :meth:`SubprocessRunner.dispatchPendingCallbacks` (or :meth:`~SubprocessRunner.wait`) on the
calling thread. Inside Slicer use the deferred mode and call ``dispatchPendingCallbacks`` from a ``qt.QTimer`` on the
main thread: MRML and Qt objects must not be touched from another thread.
"""

from __future__ import annotations

import codecs
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

CANCELLED = "cancelled"
"""Exit code reported to ``onFinished`` (and returned by ``wait``) for a run stopped by ``cancel()``."""

ExitCode = int | str
OutputCallback = Callable[[str], None]
FinishedCallback = Callable[[ExitCode], None]

_PROGRESS = re.compile(r"(?<!\d)(\d{1,3})%\|")


@runtime_checkable
class ProcessRunner(Protocol):
    """What the Logic needs from something that runs an engine command."""

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None, onOutputLine: OutputCallback | None,
              onFinished: FinishedCallback | None) -> None:
        """Start ``argv`` with ``env`` laid over the current environment; return at once.

        ``onOutputLine`` gets each line of merged stdout+stderr (tqdm's ``\\r`` redraws split into lines);
        ``onFinished`` gets the exit code, or :data:`CANCELLED`, exactly once.
        """

    def cancel(self) -> None:
        """Stop the run and everything it started; ``onFinished`` then reports :data:`CANCELLED`."""

    def isRunning(self) -> bool:
        """True from ``start`` until the process has exited and its output has been read."""

    def wait(self, timeout: float | None = None) -> ExitCode | None:
        """Block until the run ended and ``onFinished`` was delivered; the exit code, or None on timeout."""


def parseProgress(line: str) -> int | None:
    """The percentage of a tqdm bar line (``network:  45%|####5     | 00:01<00:02``), else None.

    Only ``NN%|`` counts: a bare ``45%`` in a log message is not progress. Values above 100 are not percentages.
    """
    matches = _PROGRESS.findall(line)
    if not matches:
        return None
    value = int(matches[-1])
    return value if value <= 100 else None


class LineSplitter:
    """Cut a text stream into lines at ``\\n``, ``\\r`` and ``\\r\\n``; empty lines are dropped.

    tqdm redraws its bar with ``\\r`` and no newline, so splitting on ``\\n`` alone would deliver no progress until
    the bar closes.
    """

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, text: str) -> list[str]:
        self._buffer += text
        parts = re.split(r"\r\n|\r|\n", self._buffer)
        self._buffer = parts.pop()  # a "\r\n" cut between two chunks only yields an empty line, which is dropped
        return [part for part in parts if part.strip()]

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer, ""
        return [rest] if rest.strip() else []


def pythonExecutable() -> str:
    """The Python that runs the engine.

    Inside the Slicer application ``sys.executable`` is the Slicer binary itself, so the interpreter is the
    ``PythonSlicer`` launcher shipped next to it (it sets up Slicer's Python environment). Outside the application
    (the ``slicer-core`` wheel, tests, scripts) it is simply ``sys.executable``.
    """
    try:
        import slicer
    except ImportError:
        return sys.executable
    if not hasattr(slicer, "app"):
        return sys.executable
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which("PythonSlicer")
    if not found:
        raise RuntimeError(f"{name} was not found next to {sys.executable} nor on PATH")
    return found


def killProcessTree(pid: int) -> None:
    """Kill ``pid`` and all its descendants, e.g. the DataLoader workers torch may have started.

    POSIX: the process was started in its own session, so its process group id is ``pid``; ``killpg`` also reaches
    descendants that were re-parented after their parent died, which a psutil walk would miss. psutil (when
    installed) additionally catches descendants that left the group. Windows: ``taskkill /T`` walks the tree.
    """
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False)
        return
    try:
        import psutil

        try:
            family = psutil.Process(pid).children(recursive=True)
        except psutil.NoSuchProcess:
            family = []
        for child in family:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
    except ImportError:
        pass
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


CANCEL_GRACE_SECONDS = 3.0
"""How long a cancelled engine gets to roll back (remove what it published, keep a training checkpoint) after SIGTERM,
before its process tree is killed."""


def terminateProcessTree(pid: int, exited: threading.Event, grace: float = CANCEL_GRACE_SECONDS) -> None:
    """SIGTERM to ``pid``'s process group now (the engine turns it into its rollback and exits 143), then, from a
    daemon thread, :func:`killProcessTree` if the process has not exited within ``grace`` seconds (a stuck native
    call, DataLoader workers). Windows has no SIGTERM for a tree: it is killed at once."""
    if os.name == "nt":
        killProcessTree(pid)
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass

    def killLater() -> None:
        exited.wait(grace)
        killProcessTree(pid)  # what is left: a stuck engine, or workers that outlived it

    threading.Thread(target=killLater, name=f"CADExtension cancel {pid}", daemon=True).start()


class SubprocessRunner:
    """The default :class:`ProcessRunner`: ``subprocess.Popen`` with stdout+stderr merged and a reader thread."""

    def __init__(self, deferCallbacks: bool = False) -> None:
        self.deferCallbacks = deferCallbacks
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._pending: queue.SimpleQueue[tuple[Callable[..., None], tuple]] = queue.SimpleQueue()
        self._exited = threading.Event()
        self._delivered = threading.Event()
        self._cancelRequested = False
        self._exitCode: ExitCode | None = None

    @property
    def pid(self) -> int | None:
        """The engine process id (its process group id on POSIX), or None before ``start``."""
        return self._process.pid if self._process else None

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
              onOutputLine: OutputCallback | None = None, onFinished: FinishedCallback | None = None) -> None:
        if self.isRunning():
            raise RuntimeError("a process is already running in this runner")
        environment = dict(os.environ)
        environment.update(env or {})
        options: dict = {}
        if os.name == "nt":
            options["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            options["start_new_session"] = True  # own process group, so cancel can kill the whole tree
        self._exited.clear()
        self._delivered.clear()
        self._cancelRequested = False
        self._exitCode = None
        self._process = subprocess.Popen(list(map(str, argv)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, env=environment, **options)
        self._thread = threading.Thread(target=self._readOutput, args=(self._process, onOutputLine, onFinished),
                                        name=f"CADExtension engine {self._process.pid}", daemon=True)
        self._thread.start()

    def cancel(self) -> None:
        with self._lock:
            if self._process is None or self._exited.is_set():
                return
            self._cancelRequested = True
            terminateProcessTree(self._process.pid, self._exited)

    def isRunning(self) -> bool:
        return self._process is not None and not self._exited.is_set()

    def wait(self, timeout: float | None = None) -> ExitCode | None:
        if self._process is None:
            return None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.dispatchPendingCallbacks()
            if self._delivered.is_set():
                return self._exitCode
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            step = 0.05 if remaining is None else max(0.0, min(0.05, remaining))
            if not self.deferCallbacks:
                self._delivered.wait(step)
            else:
                time.sleep(step)

    def dispatchPendingCallbacks(self) -> int:
        """Deliver queued callbacks on the calling thread (deferred mode); returns how many ran."""
        count = 0
        while True:
            try:
                function, args = self._pending.get_nowait()
            except queue.Empty:
                return count
            self._call(function, *args)
            count += 1

    def _deliver(self, function: Callable[..., None] | None, *args) -> None:
        if function is None:
            return
        if self.deferCallbacks:
            self._pending.put((function, args))
        else:
            self._call(function, *args)

    @staticmethod
    def _call(function: Callable[..., None], *args) -> None:
        try:
            function(*args)
        except Exception:  # a broken callback must not stop output reading nor the finished report
            logging.exception("CADExtension: error in a process callback")

    def _readOutput(self, process: subprocess.Popen[bytes], onOutputLine: OutputCallback | None,
                    onFinished: FinishedCallback | None) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        splitter = LineSplitter()
        assert process.stdout is not None
        try:
            while chunk := process.stdout.read1(65536):
                for line in splitter.feed(decoder.decode(chunk)):
                    self._deliver(onOutputLine, line)
            for line in splitter.feed(decoder.decode(b"", final=True)) + splitter.flush():
                self._deliver(onOutputLine, line)
        finally:
            process.stdout.close()
            code = process.wait()
            with self._lock:
                self._exitCode = CANCELLED if self._cancelRequested else code
                self._exited.set()

            def finished(exitCode: ExitCode) -> None:
                try:
                    if onFinished is not None:
                        onFinished(exitCode)
                finally:
                    self._delivered.set()

            self._deliver(finished, self._exitCode)


class TemporaryWorkspace:
    """A private temporary folder for one run, removed in every outcome (success, failure, cancel, exception).

    Use as a context manager, or call :meth:`cleanup` (idempotent, thread-safe) from whichever path ends the run:
    with a non-blocking run the folder must outlive the ``with`` block of ``run``. The engine input (the exported
    volume) can be gigabytes, so leaking it per run would fill the disk.
    """

    def __init__(self, prefix: str = "CADExtension-", parent: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._lock = threading.Lock()
        self._removed = False

    def __enter__(self) -> TemporaryWorkspace:
        return self

    def __exit__(self, *exc_info) -> None:
        self.cleanup()

    @property
    def removed(self) -> bool:
        return self._removed

    def cleanup(self, retries: int = 5) -> None:
        """Remove the folder; retry briefly because Windows may still hold a file of a just-killed process."""
        with self._lock:
            if self._removed:
                return
            for attempt in range(retries):
                try:
                    shutil.rmtree(self.path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if attempt == retries - 1:
                        shutil.rmtree(self.path, ignore_errors=True)
                    else:
                        time.sleep(0.1 * (attempt + 1))
            self._removed = not self.path.exists()
