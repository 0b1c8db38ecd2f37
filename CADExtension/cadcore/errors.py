"""One exception type for every user-facing failure.

The CLI turns a :class:`CadError` into one line on stderr and exit code 2, so a researcher (or the Slicer module
parsing our output) sees which file is wrong and why, without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class CadError(Exception):
    """A problem with the user's input: bad file, unknown model, refused overwrite."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)


def native_message(exc: BaseException) -> str:
    """SimpleITK errors are multi-line C++ traces; keep the informative last non-empty line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
