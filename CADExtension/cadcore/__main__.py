"""``python -m cadcore`` runs the ``cad`` command (also what torchrun and Slicer's PythonSlicer call)."""

from cadcore.cli import run

run()
