"""One engine job at a time in a background process: the run/wait/cancel/notify plumbing every CADExtension Logic
shares (segmentation, classification, fine-tuning).

Why one base: the rules that keep a background run safe are subtle and must be the same everywhere, so they live in
one place instead of one copy per Logic:

* **One run per Logic.** ``_lock`` guards ``_current`` and the run's ``state``; a second ``run`` while one is going
  on is refused with RuntimeError (the runner runs one process at a time too).
* **States.** ``running`` → ``importing`` (or the Logic's own word, e.g. ``registering``) → ``done``, or
  ``running`` → ``cancelled``. Once the result is being read into the scene or the model registry, ``cancel`` is
  refused: stopping half-way would leave a half-made node or model.
* **No deadlock.** ``cancel`` called from inside a runner callback (``onLog``, ``onProgress``) must not wait for the
  runner, which is itself waiting for that callback to return; a thread-local flag tells the two cases apart.
* **Nothing left behind.** The run's temporary workspace is removed and the Logic freed in every outcome (success,
  engine failure, cancel, an exception or Ctrl-C in the calling thread), by whichever path ends the run first.
* **Callbacks.** ``onProgress(percent)`` follows the engine's progress bars, ``onLog(line)`` gets every other line,
  and ``onFinished(result, error)`` reports the end (``error`` None, ``"cancelled"`` or the message) in both blocking
  and non-blocking mode. An exception in ``onFinished`` is logged, never raised: it must not mask the run's own
  result nor break the runner's reader thread.

A Logic subclasses :class:`EngineJobLogic` with its run-state dataclass (a subclass of :class:`EngineRun`), names
itself through the class attributes, builds its command in ``run`` and reads the engine's output in
:meth:`EngineJobLogic._importResult`. Imports ``slicer`` only (lazily, in :func:`defaultRunner`), never ``qt``.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from CADExtensionLib.command import engineFolder as defaultEngineFolder
from CADExtensionLib.process import (
    CANCELLED,
    ExitCode,
    ProcessRunner,
    SubprocessRunner,
    TemporaryWorkspace,
    parseProgress,
)

_ERROR_LINE = re.compile(r"^cad(?: [\w-]+)?: error: ")


def engineErrorLine(lines: Sequence[str], exitCode: ExitCode) -> str:
    """The engine's one-line error (``cad segment: error: FILE: problem``), else the last line, else the exit code."""
    for line in reversed(lines):
        if _ERROR_LINE.match(line.strip()):
            return line.strip()
    for line in reversed(lines):
        if line.strip() and parseProgress(line) is None:
            return line.strip()
    return f"engine exited with code {exitCode}"


def defaultRunner() -> SubprocessRunner:
    """A :class:`SubprocessRunner`, deferring callbacks inside the Slicer application so that MRML is only touched
    on the main thread (see :meth:`EngineJobLogic.processEvents`), calling them directly elsewhere."""
    import slicer

    return SubprocessRunner(deferCallbacks=hasattr(slicer, "app"))


@dataclass(kw_only=True)
class EngineRun:
    """State of one run, shared by the calling thread, the runner's callbacks and ``cancel``.

    Keyword-only, so that a Logic's subclass can add its own positional fields (input node, output path ...).
    """

    workspace: TemporaryWorkspace
    onProgress: Callable[[int], None] | None = None
    onLog: Callable[[str], None] | None = None
    onFinished: Callable[[Any, str | None], None] | None = None
    state: str = "running"  # running → importing (or registering) → done, or running → cancelled
    lines: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    progress: int = -1


RunT = TypeVar("RunT", bound=EngineRun)
Prepare = Callable[[RunT], tuple[Sequence[str], Mapping[str, str]]]


class EngineJobLogic(Generic[RunT]):
    """Runs one engine command at a time for a Logic; see the module docstring for the rules it enforces.

    Subclasses set the class attributes below and implement :meth:`_importResult`; their ``run`` checks its input,
    then calls :meth:`_runJob`.
    """

    logPrefix: ClassVar[str] = "CADExtension"
    """Prefix of this Logic's log messages (the module name)."""
    taskName: ClassVar[str] = "engine run"
    """Starts the messages ``"<task> cancelled"`` and ``"<task> failed: <engine error>"``."""
    busyMessage: ClassVar[str | None] = None
    """Refusal of a second run; default ``"a <task> is already running; cancel it or wait for it first"``."""
    workspacePrefix: ClassVar[str | None] = None
    """Temporary folder name prefix; default ``"<logPrefix>-"``."""
    importingState: ClassVar[str] = "importing"
    """The state while the result is read in, when ``cancel`` is refused."""
    cancelledError: ClassVar[type[Exception]] = RuntimeError
    """Raised by a blocking ``run`` that ``cancel()`` stopped."""

    def __init__(self, runner: ProcessRunner | None = None, engineFolder: str | os.PathLike[str] | None = None,
                 python: str | None = None, temporaryFolder: str | os.PathLike[str] | None = None) -> None:
        self.runner: ProcessRunner = runner if runner is not None else defaultRunner()
        self.engineFolder = Path(engineFolder) if engineFolder else defaultEngineFolder()
        self.python = python
        self.temporaryFolder = temporaryFolder
        self._lock = threading.Lock()
        self._current: RunT | None = None
        self._inCallback = threading.local()

    def isRunning(self) -> bool:
        return self._current is not None

    def processEvents(self) -> int:
        """Deliver the runner's queued callbacks (progress, log, import on completion) on the calling thread.

        Inside Slicer the default runner defers its callbacks, so the module widget calls this from a ``qt.QTimer``
        on the main thread while :meth:`isRunning`; a blocking ``run`` does it by itself. Returns how many ran.
        """
        dispatch = getattr(self.runner, "dispatchPendingCallbacks", None)
        return dispatch() if dispatch is not None else 0

    def cancel(self, timeout: float = 10.0) -> bool:
        """Stop the current run: kill the engine's process tree, remove its temporary files. False if too late
        (nothing running, or the result is already being read in: cancelling would leave half of it behind)."""
        with self._lock:
            run = self._current
            if run is None or run.state != "running":
                return False
            run.state = "cancelled"
        self.runner.cancel()
        if not getattr(self._inCallback, "active", False):  # waiting inside a runner callback would deadlock
            self.runner.wait(timeout)
        self._end(run)  # normally done already by the finished callback; not if nobody dispatched it
        return True

    # --- for subclasses -----------------------------------------------------------------------------------------

    def _runJob(self, makeRun: Callable[[TemporaryWorkspace], RunT], prepare: Prepare, wait: bool) -> Any:
        """Claim the Logic, then run the engine: the result (``wait=True``) or None at once (``wait=False``).

        ``makeRun(workspace)`` builds the run state in a fresh workspace; ``prepare(run)`` writes the engine's input
        there and returns ``(argv, env)``. Whatever fails or is interrupted leaves no workspace and a free Logic.
        """
        with self._lock:
            if self._current is not None:
                raise RuntimeError(self.busyMessage
                                   or f"a {self.taskName} is already running; cancel it or wait for it first")
            workspace = TemporaryWorkspace(prefix=self.workspacePrefix or f"{self.logPrefix}-",
                                           parent=self.temporaryFolder)
            run = makeRun(workspace)
            self._current = run
        try:
            argv, env = prepare(run)
            logging.info("%s: running %s", self.logPrefix, " ".join(argv))
            self.runner.start(argv, env, lambda line: self._onLine(run, line),
                              None if wait else (lambda code: self._onFinishedAsync(run, code)))
        except BaseException:
            self._end(run)
            raise
        if not wait:
            return None
        try:
            code = self.runner.wait()
        except BaseException:  # e.g. Ctrl-C in a script: stop the engine too, leave nothing behind
            self.cancel()
            self._end(run)
            raise
        try:
            result = self._finish(run, code)
        except Exception as exc:
            self._notify(run, None, CANCELLED if isinstance(exc, self.cancelledError) else str(exc))
            raise
        self._notify(run, result, None)
        return result

    def _importResult(self, run: RunT) -> Any:
        """Read the successful engine's output into the scene (or registry); raise RuntimeError if it is unusable.
        Runs on the thread that ends the run (the caller's, or the main thread through :meth:`processEvents`)."""
        raise NotImplementedError

    def _onProgressLine(self, run: RunT, line: str, percent: int) -> None:
        """A progress bar redraw (never logged): by default its percentage, reported when it changes."""
        self._reportProgress(run, percent)

    @staticmethod
    def _reportProgress(run: EngineRun, percent: int) -> None:
        if percent != run.progress and run.onProgress:
            run.progress = percent
            run.onProgress(percent)

    # --- the plumbing -------------------------------------------------------------------------------------------

    def _onLine(self, run: RunT, line: str) -> None:
        self._inCallback.active = True
        try:
            run.lines.append(line)
            percent = parseProgress(line)
            if percent is not None:
                self._onProgressLine(run, line, percent)
                return
            logging.debug("cad: %s", line)
            if run.onLog:
                run.onLog(line)
        finally:
            self._inCallback.active = False

    def _onFinishedAsync(self, run: RunT, code: ExitCode) -> None:
        try:
            result = self._finish(run, code)
        except Exception as exc:
            logging.error("%s: %s", self.logPrefix, exc)
            self._notify(run, None, CANCELLED if isinstance(exc, self.cancelledError) else str(exc))
            return
        self._notify(run, result, None)

    def _finish(self, run: RunT, code: ExitCode | None) -> Any:
        """Import the result (exit code 0) or raise; the workspace is removed and the logic freed in every case."""
        try:
            with self._lock:
                if run.state == "cancelled" or code == CANCELLED:
                    run.state = "cancelled"
                    raise self.cancelledError(f"{self.taskName} cancelled")
                run.state = self.importingState
            if code != 0:
                raise RuntimeError(f"{self.taskName} failed: {engineErrorLine(list(run.lines), code)}")
            return self._importResult(run)
        finally:
            self._end(run)

    def _end(self, run: RunT) -> None:
        run.workspace.cleanup()
        with self._lock:
            if run.state != "cancelled":
                run.state = "done"
            if self._current is run:
                self._current = None

    def _notify(self, run: RunT, result: Any, error: str | None) -> None:
        if run.onFinished is None:
            return
        try:
            run.onFinished(result, error)
        except Exception:
            logging.exception("%s: error in onFinished", self.logPrefix)
