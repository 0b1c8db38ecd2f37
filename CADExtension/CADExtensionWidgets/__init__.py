"""Qt helpers the CADSegment and CADClassify panels share, kept beside the hidden CADExtension module that owns them.

Layer 3 like the module files: imports qt, ctk and slicer's parameterNodeWrapper, so it runs only inside the Slicer
application. That is why it is not in ``CADExtensionLib``, which must stay Qt-free for the slicer-core wheel; the
Qt-free part of the model selector (``ModelSummary`` and ``modelDescription``) lives there and is tested there.

Importing this package registers :class:`ModelSelectorConnector` with the parameter node wrapper, so a panel must
import it before its ``connectGui``.
"""

from CADExtensionWidgets.ModelSelector import (
    MODEL_ID_ROLE,
    ModelSelectorConnector,
    populateModelSelector,
    selectedModelId,
)

__all__ = ["MODEL_ID_ROLE", "ModelSelectorConnector", "populateModelSelector", "selectedModelId"]
