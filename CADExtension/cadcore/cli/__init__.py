"""The ``cad`` command: segment, batch, interact, classify, train, evaluate, models, serve.

Contract: exit 0 on success; exit 2 with one line on stderr naming the file and the problem on bad input or usage;
nothing written on failure. Each subcommand's handler lives in its own module here and is imported only when that
subcommand runs, so ``cad models list`` never pays for torch's training stack.

For every command, SIGTERM (Slicer's or a scheduler's cancel) and SIGINT (Ctrl-C) become ``KeyboardInterrupt``, so
the rollback each command already has runs (``cad segment`` writes all outputs or none; temporary folders are
removed; ``cad train`` saves its checkpoint); the exit code is then 128 + the signal (130, 143) after one line.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from cadcore.cli.parser import build_parser
from cadcore.cli.signals import _received, interrupt_on_signals  # noqa: F401 (re-exported)
from cadcore.errors import CadError


def handler_of(command: str) -> ModuleType:
    """The module whose ``run(args)`` carries out ``command`` (imported here, written out for the layering test)."""
    if command == "segment":
        from cadcore.cli import segment as handler
    elif command == "classify":
        from cadcore.cli import classify as handler
    elif command == "train":
        from cadcore.cli import train as handler
    elif command == "evaluate":
        from cadcore.cli import evaluate as handler
    elif command == "interact":
        from cadcore.cli import interact as handler
    elif command == "serve":
        from cadcore.cli import serve as handler
    elif command == "batch":
        from cadcore.cli import batch as handler
    else:
        from cadcore.cli import models as handler
    return handler


def quiet_library_warnings() -> None:
    """MONAI's FutureWarnings and DeprecationWarnings are about its own API, not the user's data: they would be
    extra stderr lines on every ``cad evaluate`` (and the Slicer module shows stderr). ``python -W`` still wins."""
    if sys.warnoptions:
        return
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"monai(\.|$)")
        warnings.filterwarnings("ignore", category=category, message=r".*\bmonai\.")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    restore = interrupt_on_signals()
    try:
        with warnings.catch_warnings():
            quiet_library_warnings()
            if getattr(args, "device", None) not in (None, "auto"):  # an unknown or absent device: before any work
                from cadcore.device import pick_device

                pick_device(args.device)
            code = handler_of(args.command).run(args)
            sys.stdout.flush()  # a closed pipe shows here, inside the handling below, not at interpreter exit
            return code
    except CadError as exc:
        return _error(args.command, str(exc), 2)
    except KeyboardInterrupt:
        return _error(args.command, "interrupted", 128 + (_received[0] if _received else signal.SIGINT))
    except BrokenPipeError:  # `cad models show X | head`: the reader left; say nothing, like any Unix tool
        _detach_stdout()
        return 128 + getattr(signal, "SIGPIPE", 13)
    except OSError as exc:  # a file the engine could not read or write, named, in one line
        where = f"{exc.filename}: " if exc.filename else ""
        return _error(args.command, f"{where}{exc.strerror or exc}", 2)
    finally:
        restore()


def run() -> NoReturn:
    """The ``cad`` console command (and ``python -m cadcore``): :func:`main`, then :func:`exit_now`."""
    exit_now(main())


def exit_now(code: int) -> NoReturn:
    """Leave without the interpreter's teardown once the command has finished and its files are closed.

    Unloading torch's modules and their native state at exit costs 0.3-0.9 s per process here (``python -c "import
    torch"`` takes 1.36 s, 1.05 s with ``os._exit``), paid by every Slicer Apply and every ``cad segment`` in a
    script for nothing: the outputs are already written, renamed and verified. What exit must still do is done
    first: the ``atexit`` functions (temporary folders, logging, multiprocessing children) and the flush of stdout and
    stderr. With another non-daemon thread still running the interpreter exits normally, so that thread finishes.
    """
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if others or run_exit_functions is None:
        sys.exit(code)
    run_exit_functions()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # a reader that left, a closed or absent stream
            pass
    os._exit(code)


def _error(command: str, message: str, code: int) -> int:
    try:
        sys.stderr.write(f"cad {command}: {'error: ' if code == 2 else ''}{message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return code


def _detach_stdout() -> None:
    """Point stdout at the null device so the interpreter's final flush does not raise a second BrokenPipeError."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError, AttributeError):
        pass
