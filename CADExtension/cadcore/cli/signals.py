"""SIGTERM and SIGINT as KeyboardInterrupt, held back while a file is being published (:mod:`cadcore.io.writing`).

Its own module so that ``cad``'s entry point (:mod:`cadcore.cli`) and ``cad batch``'s worker processes
(:mod:`cadcore.cli.batch`) arm the same handler without the batch module importing its own package.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

_received: list[int] = []  # the signals that interrupted this run, first one first


def interrupt_on_signals() -> Callable[[], None]:
    """SIGTERM and SIGINT both become KeyboardInterrupt; returns the function that restores the previous handlers.

    SIGINT is re-armed because shells start background jobs with it ignored. Only the first signal interrupts: a
    second one (an impatient Ctrl-C) is ignored so it cannot cut the rollback short; SIGKILL still stops the process.
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        return lambda: None

    def raise_interrupt(signum, frame):  # noqa: ARG001
        _received.append(signum)
        if len(_received) > 1:
            return
        writing = sys.modules.get("cadcore.io.writing")  # never import in a handler; not loaded: nothing held
        if writing is not None and writing.interrupts_held():
            writing.defer_interrupt()  # a file was just published: raised once it is recorded for the rollback
            return
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    _received.clear()
    for sig in previous:
        signal.signal(sig, raise_interrupt)

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    return restore
