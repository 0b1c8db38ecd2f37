"""The CAD AI Segment Editor effect (layer 3, Qt). Slicer loads ``SegmentEditorEffect.py`` itself through
``qSlicerSegmentEditorScriptedEffect.setPythonSource`` (module name: this folder's name; class name: the file's), so
nothing is imported here: importing the effect needs the Slicer application."""
