"""``cad train``: every default in :mod:`.config`; supervised segmentation, cascades, self-training, transfer
learning, DDP and classifier training, each in its own module.
"""
