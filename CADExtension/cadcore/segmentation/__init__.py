"""Segmentation inference: sliding window and flip TTA, single-stage and cascaded models, MONAI bundles,
post-processing and the sidecar that describes a result.
"""
