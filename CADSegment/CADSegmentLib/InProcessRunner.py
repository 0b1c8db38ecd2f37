"""Running the engine inside this interpreter, for scripting and tests (the only glue file that imports cadcore,
and only inside the engine thread, so importing the glue never loads torch)."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence

from CADExtensionLib.command import ENGINE_MODULE
from CADExtensionLib.process import CANCELLED, ExitCode, FinishedCallback, LineSplitter, OutputCallback


class _LineWriter(io.TextIOBase):
    """A text stream that hands each completed line (split at ``\\n`` and ``\\r``) to a callback."""

    encoding = "utf-8"

    def __init__(self, onLine: OutputCallback | None) -> None:
        super().__init__()
        self._onLine = onLine
        self._splitter = LineSplitter()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for line in self._splitter.feed(text):
            if self._onLine:
                self._onLine(line)
        return len(text)

    def finish(self) -> None:
        for line in self._splitter.flush():
            if self._onLine:
                self._onLine(line)


class _Cancelled(BaseException):
    """Raised asynchronously inside the engine thread by :meth:`InProcessRunner.cancel`."""


class InProcessRunner:
    """A :class:`ProcessRunner` that runs ``cadcore.cli.main(argv[3:])`` in a thread of this interpreter.

    For scripting and tests: no process start-up cost, and engine exceptions surface with tracebacks. It is not
    isolated (it redirects ``sys.stdout``/``sys.stderr`` while running and needs torch/MONAI in this interpreter),
    and ``cancel`` is best effort: it raises an exception in the engine thread, which takes effect when that thread
    next runs Python code, not inside a long native call. Use :class:`SubprocessRunner` in the Slicer application.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._exited = threading.Event()
        self._delivered = threading.Event()
        self._cancelRequested = False
        self._exitCode: ExitCode | None = None

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None,
              onOutputLine: OutputCallback | None = None, onFinished: FinishedCallback | None = None) -> None:
        argv = [str(a) for a in argv]
        if argv[1:3] != ["-m", ENGINE_MODULE]:
            raise ValueError(f"InProcessRunner only runs 'python -m {ENGINE_MODULE} ...' commands, got {argv[:3]}")
        if self.isRunning():
            raise RuntimeError("a run is already in progress in this runner")
        for entry in reversed((env or {}).get("PYTHONPATH", "").split(os.pathsep)):
            if entry and entry not in sys.path:
                sys.path.insert(0, entry)  # what PYTHONPATH would do for a child process
        self._exited.clear()
        self._delivered.clear()
        self._cancelRequested = False
        self._exitCode = None
        self._thread = threading.Thread(target=self._run, args=(argv[3:], onOutputLine, onFinished),
                                        name="CADExtension engine (in process)", daemon=True)
        self._thread.start()

    def _run(self, args: list[str], onOutputLine: OutputCallback | None,
             onFinished: FinishedCallback | None) -> None:
        writer = _LineWriter(onOutputLine)
        code: ExitCode = 1
        try:
            with contextlib.redirect_stdout(writer), contextlib.redirect_stderr(writer):
                from cadcore.cli import main  # lazily: the glue itself never imports the engine

                code = main(args)
        except _Cancelled:
            code = CANCELLED
        except SystemExit as exc:  # argparse usage errors: the message is already on (our) stderr
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            writer.write(traceback.format_exc())
            code = 1
        finally:
            writer.finish()
            self._exitCode = CANCELLED if self._cancelRequested else code
            self._exited.set()
            try:
                if onFinished is not None:
                    onFinished(self._exitCode)
            except Exception:
                logging.exception("CADExtension: error in onFinished")
            finally:
                self._delivered.set()

    def cancel(self) -> None:
        thread = self._thread
        if thread is None or self._exited.is_set() or thread.ident is None:
            return
        self._cancelRequested = True
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Cancelled))

    def isRunning(self) -> bool:
        return self._thread is not None and not self._exited.is_set()

    def wait(self, timeout: float | None = None) -> ExitCode | None:
        if self._thread is None:
            return None
        return self._exitCode if self._delivered.wait(timeout) else None
