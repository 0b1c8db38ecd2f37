"""Silence what native libraries print, and keep it for the error message.

ITK, GDCM, MetaIO and the NIfTI library write warnings straight to file descriptor 2, below Python's ``sys.stderr``:
a refusal would become several lines (sometimes with the real cause on a line other than ours) and a success would
print noise that the Slicer module shows as an error. Around every native read we turn off ITK's warning display and
point descriptor 2 at a temporary file; what was captured can be quoted in the one-line message.
"""

from __future__ import annotations

import contextlib
import locale
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import SimpleITK as sitk

from cadcore.errors import CadError, native_message

T = TypeVar("T")


class Captured:
    """The text native code printed inside :func:`quiet_native` (available once the block ends)."""

    def __init__(self) -> None:
        self.text = ""

    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.splitlines() if line.strip()]

    def informative(self) -> str:
        """The line worth quoting: ITK's warnings are ``WARNING: In <source file>, line N`` then the message."""
        useful = [line for line in self.lines() if not line.startswith(("WARNING: In ", "ERROR: In "))]
        return re.sub(r"\s*\(0x[0-9a-fA-F]+\)", "", useful[-1]) if useful else ""


@contextlib.contextmanager
def quiet_native() -> Iterator[Captured]:
    """Run the block with ITK warnings off and descriptor 2 captured; restore both even when the block raises.

    Nested use is fine (the inner block captures, the outer gets nothing from it). Python's own ``sys.stderr`` is
    flushed first so nothing of ours lands in the capture. LC_CTYPE is put back too: GDCM's writer is known to switch
    it to "C", after which Python would decode text files as ASCII.

    Descriptor 2, ITK's warning switch and the locale belong to the whole process, so blocks in different threads
    (``cad batch`` reads the next case in a thread while the main thread writes) take turns: interleaved, one
    thread's restore would undo the other's (warnings left off, stderr left in a closed temporary file)."""
    with _QUIET_LOCK:
        yield from _quiet_native()


_QUIET_LOCK = threading.RLock()  # re-entrant: a block nested in the same thread does not wait for itself


@contextlib.contextmanager
def itk_warnings_off() -> Iterator[None]:
    """ITK's warnings off for the block (descriptor 2 untouched), taking turns with :func:`quiet_native`."""
    with _QUIET_LOCK:
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            yield
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _quiet_native() -> Iterator[Captured]:
    captured = Captured()
    ctype = locale.setlocale(locale.LC_CTYPE)
    previous_display = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    with contextlib.suppress(AttributeError, ValueError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all (a daemon): nothing to silence
        try:
            yield captured
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(previous_display)
            locale.setlocale(locale.LC_CTYPE, ctype)
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sitk.ProcessObject.SetGlobalWarningDisplay(previous_display)
            locale.setlocale(locale.LC_CTYPE, ctype)
            sink.seek(0)
            captured.text = sink.read(1 << 16).decode("utf-8", "replace")


def call_quietly(call: Callable[[], T], path: str | Path, what: str = "cannot read image") -> T:
    """``call()`` under :func:`quiet_native`; a native failure becomes one :class:`CadError` line quoting ITK's
    message and, when it adds something, the last warning the library printed before failing."""
    error: RuntimeError | None = None
    with quiet_native() as noise:
        try:
            result = call()
        except RuntimeError as exc:
            error = exc
    if error is not None:
        detail = native_message(error)
        extra = noise.informative()
        if extra and extra not in detail:
            detail = f"{detail}; {extra}"
        raise CadError(f"{what} ({detail})", path) from error
    return result
