"""One model of the registry as the Slicer side sees it: :class:`ModelSummary`, and the text a panel shows for it.

Why a type and not a dict: the model manager table, the model selectors, the fast-mode check box, fine-tuning and
the default classification model all read the same few facts, and they used to get them as loose dicts whose keys
and value types (None or "" for a missing modality, a label dict or a list of names) depended on who built them. A
:class:`ModelSummary` is built once, by ``CADExtensionLib.models`` when it reads a card or a bundle's metadata, with
every field normalised (text is ``str``, ``""`` when absent); it is frozen, so a panel cannot change the registry's
view of a model by accident.

Standard library only, and no Qt (``_`` falls back to the untranslated text on the slicer-core wheel, which has no
``slicer.i18n``), so the MRML suite tests it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

try:
    from slicer.i18n import tr as _
except ImportError:  # the slicer-core wheel: no slicer.i18n, and no application to translate with

    def _(text: str) -> str:
        return text


def _labelOrder(value: str) -> int:
    """Label values in numeric order ("10" after "2"); a key that is no number sorts as 0 (the background's place)."""
    return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class ModelSummary:
    """What the registry knows about one model (see the module docstring for why it is typed and frozen).

    ``labels`` maps each label value (as text, as in a card or a bundle's ``channel_def``) to its segment name;
    ``classes`` are a classifier's class names by class value; ``fast`` is the card's low-resolution section for
    ``cad segment --fast``, or None. ``labels`` and ``fast`` are read-only mappings, so the object is not hashable.
    """

    id: str
    task: str  # "segmentation" or "classification"; every MONAI bundle runs as a segmentation model
    path: str  # the package (or bundle) folder
    title: str = ""  # the name shown in selectors; the id when empty (model cards have no title field today)
    version: str = ""
    description: str = ""
    modality: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    classes: tuple[str, ...] = ()
    shipped: bool = False  # in the extension's cadcore/models: read-only for the model manager
    bundle: bool = False  # a MONAI bundle folder rather than a model package
    baseline: bool = False  # the classical hand-crafted-feature classifier ("network": {"name": "baseline"})
    bundleTask: str = ""  # a bundle's own metadata "task" (free text); "" for a model package
    fast: Mapping[str, Any] | None = None
    guided: bool = False  # a guided (interactive) network: it needs clicks, so only the CAD AI effect offers it
    pipeline: str = ""  # the card's own pipeline ("meshnet", "hippodeep"): its conventions, no probabilities to average

    def __post_init__(self) -> None:
        # Copies, so neither the card dict it came from nor a caller holding the argument can change the summary.
        object.__setattr__(self, "title", self.title or self.id)
        object.__setattr__(self, "labels", MappingProxyType({str(k): str(v) for k, v in self.labels.items()}))
        object.__setattr__(self, "classes", tuple(str(name) for name in self.classes))
        if self.fast is not None:
            object.__setattr__(self, "fast", MappingProxyType(copy.deepcopy(dict(self.fast))))

    @property
    def labelNames(self) -> tuple[str, ...]:
        """Segment names in label-value order: what a panel lists (``labels`` keeps the values too)."""
        return tuple(self.labels[value] for value in sorted(self.labels, key=_labelOrder))

    @property
    def displayName(self) -> str:
        """The selector's text: the title, followed by the id when they differ."""
        return self.title if self.title == self.id else f"{self.title} ({self.id})"


def modelDescription(summary: ModelSummary | None, modelId: str | None = None) -> str:
    """The text of a panel's model description label and of a model's tooltip.

    ``modelId`` is the selected id when it has no summary: a scene saved with a model that is not installed here
    keeps its selection (see ``CADExtensionWidgets``), and the label says what to do about it.
    """
    if summary is None and modelId:
        return _("{model} is not installed. Import it with \"Manage models\".").format(model=modelId)
    if summary is None:
        return _("No model selected. Import one with \"Manage models\".")
    lines = [summary.description or summary.title]
    if summary.modality:
        lines.append(_("Modality: {modality}").format(modality=summary.modality))
    if summary.labels:
        lines.append(_("Labels: {names}").format(names=", ".join(summary.labelNames)))
    if summary.classes:
        lines.append(_("Classes: {names}").format(names=", ".join(summary.classes)))
    return "\n".join(lines)
