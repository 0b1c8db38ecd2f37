"""``python -m cadcore`` runs the ``cad`` command (also what torchrun and Slicer's PythonSlicer call)."""

import sys

from cadcore.cli import main

sys.exit(main())
