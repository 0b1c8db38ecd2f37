"""cadcore: the CADExtension engine (segmentation, classification, training, evaluation).

Never imports slicer, vtk or qt: the Slicer modules call it through the ``cad`` command line.
"""

__version__ = "0.1.0"
