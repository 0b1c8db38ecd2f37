"""ModelSummary, the registry's typed view of one model, and the description text the panels show for it: the same
facts the panels used to re-parse from dicts (title defaults to the id, label names in label-value order, text
fields never None), frozen, and translated text that falls back to English on slicer-core (no ``slicer.i18n``)."""

from __future__ import annotations

import dataclasses

import pytest
from CADExtensionLib import model_summary
from CADExtensionLib.model_summary import ModelSummary, modelDescription


def test_summary_normalises_once_and_is_frozen():
    card_fast = {"spacing": [2.0, 2.0, 3.0]}
    labels = {"10": "ten", "2": "two", 1: "one"}
    summary = ModelSummary(id="m", task="segmentation", path="/models/m", labels=labels, classes=["a", "b"],
                           fast=card_fast)
    assert summary.title == "m" and summary.displayName == "m"
    assert summary.labels == {"10": "ten", "2": "two", "1": "one"} and summary.labelNames == ("one", "two", "ten")
    assert summary.classes == ("a", "b") and summary.fast == card_fast
    labels["3"] = "three"  # the caller's dicts are copied: changing them later does not change the summary
    card_fast["spacing"].append(9.0)
    assert "3" not in summary.labels and summary.fast == {"spacing": [2.0, 2.0, 3.0]}
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        summary.labels["4"] = "four"  # type: ignore[index]
    assert ModelSummary(id="m", task="classification", path="", title="Model M").displayName == "Model M (m)"


def test_description_text():
    assert modelDescription(None) == 'No model selected. Import one with "Manage models".'
    assert modelDescription(None, "gone") == 'gone is not installed. Import it with "Manage models".'
    bare = ModelSummary(id="bare", task="segmentation", path="")
    assert modelDescription(bare) == "bare"  # no description: the title
    full = ModelSummary(id="seg", task="segmentation", path="", description="Hippocampus U-Net", modality="MR",
                        labels={"2": "posterior", "1": "anterior"})
    assert modelDescription(full) == "Hippocampus U-Net\nModality: MR\nLabels: anterior, posterior"
    classifier = ModelSummary(id="cls", task="classification", path="", classes=("benign", "malignant"))
    assert modelDescription(classifier) == "cls\nClasses: benign, malignant"


def test_text_is_untranslated_without_slicer_i18n():
    """slicer-core has no ``slicer.i18n``: the Lib's ``_`` must be the identity there, not an ImportError."""
    try:
        import slicer.i18n  # noqa: F401
    except ImportError:
        assert model_summary._("Labels: {names}") == "Labels: {names}"
    else:
        pytest.skip("slicer.i18n exists here (the Slicer application): translation is Slicer's")
