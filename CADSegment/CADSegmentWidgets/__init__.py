"""Parts of the CADSegment panel kept out of ``CADSegment.py`` so the module file stays short.

Layer 3 like the module file: imports qt and slicer, runs only inside the Slicer application, and does no work of its
own (that is ``CADSegmentLib``, tested on slicer-core). The static and UI suites check it with the module file.
"""

from CADSegmentWidgets.BatchSection import BatchSection
from CADSegmentWidgets.ImproveModelSection import ImproveModelSection

__all__ = ["BatchSection", "ImproveModelSection"]
