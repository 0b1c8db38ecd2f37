"""Import MONAI without the plotting and statistics packages it loads eagerly and ``cad`` never uses through it.

``import monai`` imports every MONAI submodule, and through their ``optional_import`` calls matplotlib (notebook
plots), scipy.signal with scipy.stats (an ultrasound transform), scipy.optimize and scikit-learn (two metrics):
about 1.3 s of the 2.5 s MONAI costs ``cad segment`` on 2 cores, paid by every Slicer Apply and every batch case
(docs/benchmarks.md).
Blocking them for the duration of that one import makes MONAI record them as absent, exactly as on a machine
without them; nothing ``cad`` runs through MONAI (networks, sliding window, bundle transforms) needs them, and cad's
own later imports of them (``--png`` overlays, the scikit-learn classifiers) work, as the block is lifted at once.
A MONAI bundle that falls back to ``monai.bundle`` with a transform needing one of them would find it missing:
``CAD_FULL_MONAI=1`` imports MONAI whole (the old start-up cost).
"""

from __future__ import annotations

import importlib.abc
import os
import sys

NOT_WITH_MONAI = ("matplotlib", "scipy.signal", "scipy.stats", "scipy.optimize", "sklearn")


class _Block(importlib.abc.MetaPathFinder):
    """Refuses the listed packages (MONAI's ``optional_import`` catches the error and records them as absent)."""

    def find_spec(self, name, path=None, target=None):  # noqa: ARG002
        if any(name == blocked or name.startswith(blocked + ".") for blocked in NOT_WITH_MONAI):
            raise ModuleNotFoundError(f"No module named {name!r} (not loaded with MONAI by cad)", name=name)
        return None


def import_monai() -> None:
    """``import monai`` once per process, without :data:`NOT_WITH_MONAI` unless they were already loaded."""
    if "monai" in sys.modules:
        return
    if os.environ.get("CAD_FULL_MONAI") == "1":
        import monai  # noqa: F401
        return
    block = _Block()
    sys.meta_path.insert(0, block)
    try:
        import monai  # noqa: F401
    finally:
        sys.meta_path.remove(block)
