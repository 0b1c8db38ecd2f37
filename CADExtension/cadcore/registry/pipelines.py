"""Models run by their own pipeline rather than the standard one: the card section ``pipeline`` and its readers.

Published networks come with their own conventions (brainchop's MeshNets: FreeSurfer-style conform and percentile
scaling, whole-volume inference; hippodeep: a head mask, an affine to its template and a crop before the hippocampus
network). A card states them as ``"pipeline": {"name": ..., "networks": {...}, <options>}``: ``networks`` are the
extra networks (tensors under ``"<role>."`` in the weights), the options are read into the pipeline's own typed
object by the module :data:`PIPELINES` names (``read_options(section, fail) -> options``; ``fail(field, problem)``
returns the one-line :class:`CadError` naming ``pipeline.<field>``). The segmentation layer runs them
(``cadcore.segmentation.pipelines``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from cadcore.errors import CadError

PIPELINES = {
    "meshnet": ("cadcore.registry.meshnet_card", "cadcore.segmentation.meshnet_pipeline"),
    "hippodeep": ("cadcore.registry.hippodeep_card", "cadcore.segmentation.hippodeep_pipeline"),
}
"""Pipeline name → (the registry module that reads its options, the segmentation module whose ``segment`` runs it):
one fixed table, so a pipeline is added in one place, and a card never names code."""

Fail = Callable[[str, str], CadError]


def read_options(name: str, section: Mapping[str, Any], fail: Fail) -> Any:
    """The pipeline's typed options from its card section (without ``name`` and ``networks``)."""
    if name not in PIPELINES:
        raise fail("name", f"must be one of {', '.join(sorted(PIPELINES))}, got {name!r}")
    return importlib.import_module(PIPELINES[name][0]).read_options(section, fail)
