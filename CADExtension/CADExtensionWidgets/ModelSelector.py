"""The panels' model selector: a ``ctkComboBox`` whose items carry model ids, and its parameter-node connector.

Why a connector of our own: Slicer's QComboBox connector binds a ``str`` parameter only through a fixed ``Choice``
list, but the models come from the registry at run time (and change when the user imports one). Items show the
model's ``displayName`` and carry its id in :data:`MODEL_ID_ROLE`, so the parameter node stores the id, never the
text. A selected id that is not installed (a scene saved elsewhere) stays selected and shown as "not installed"
rather than being replaced silently by another model.
"""

from collections.abc import Sequence

import ctk
import qt
from CADExtensionLib.model_summary import ModelSummary, modelDescription
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import GuiConnector, parameterNodeGuiConnector, unannotatedType

MODEL_ID_ROLE = qt.Qt.UserRole


def selectedModelId(comboBox) -> str:
    """The id carried by the current item, ``""`` when nothing is selected."""
    index = comboBox.currentIndex
    return str(comboBox.itemData(index, MODEL_ID_ROLE) or "") if index >= 0 else ""


def populateModelSelector(comboBox, models: Sequence[ModelSummary]) -> None:
    """Fill ``comboBox`` with ``models``, keeping the current id selected when it is still listed (or when it is not:
    then as "not installed")."""
    currentId = selectedModelId(comboBox)
    wasBlocked = comboBox.blockSignals(True)  # no parameter-node churn while the list is rebuilt
    comboBox.clear()
    for info in models:
        comboBox.addItem(info.displayName)
        comboBox.setItemData(comboBox.count - 1, info.id, MODEL_ID_ROLE)
        comboBox.setItemData(comboBox.count - 1, modelDescription(info), qt.Qt.ToolTipRole)
    index = comboBox.findData(currentId, MODEL_ID_ROLE) if currentId else -1
    if currentId and index < 0:  # the selected model is gone: keep showing it rather than switch models silently
        index = _addUninstalledModel(comboBox, currentId)
    comboBox.currentIndex = -1
    comboBox.blockSignals(wasBlocked)
    # from -1 to the kept (or first) model: currentIndexChanged fires, so the parameter node and description follow
    comboBox.currentIndex = index if index >= 0 else (0 if comboBox.count else -1)


def _addUninstalledModel(comboBox, modelId: str) -> int:
    """Append an item for ``modelId``, which no installed model has; returns its index."""
    comboBox.addItem(_("{model} (not installed)").format(model=modelId))
    comboBox.setItemData(comboBox.count - 1, modelId, MODEL_ID_ROLE)
    return comboBox.count - 1


@parameterNodeGuiConnector
class ModelSelectorConnector(GuiConnector):
    """Binds a ``ctkComboBox`` whose items carry model ids (``MODEL_ID_ROLE``) to a ``str`` parameter."""

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return type(widget) == ctk.ctkComboBox and unannotatedType(datatype) == str  # noqa: E721 (exact type)

    @staticmethod
    def create(widget, datatype):
        return ModelSelectorConnector(widget) if ModelSelectorConnector.canRepresent(widget, datatype) else None

    def __init__(self, widget) -> None:
        super().__init__()
        self._widget = widget

    def _connect(self) -> None:
        self._widget.currentIndexChanged.connect(self.changed)

    def _disconnect(self) -> None:
        self._widget.currentIndexChanged.disconnect(self.changed)

    def widget(self):
        return self._widget

    def read(self) -> str:
        return selectedModelId(self._widget)

    def write(self, value: str) -> None:
        index = self._widget.findData(value, MODEL_ID_ROLE) if value else -1
        if value and index < 0:  # a model saved in the scene but not installed here: show it, do not drop it
            index = _addUninstalledModel(self._widget, value)
        self._widget.currentIndex = index
