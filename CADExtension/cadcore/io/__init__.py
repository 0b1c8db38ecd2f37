"""Reading and writing images, labelmaps, overlay PNGs and datasets, with exact geometry and atomic writes.

The lowest layer above ``errors``: it knows files, never models.
"""
