"""Regenerate the module icons and the panel mock-ups: ``.venv/bin/python Docs/make_images.py``.

* Icons (128x128 RGBA PNG, drawn with numpy at 4x and averaged down, written with zlib; no imaging library):
  ``<Module>/Resources/Icons/<Module>.png``. ``CADExtension.png`` is also the extension icon (EXTENSION_ICONURL).
* Mock-ups: each module's ``.ui`` loaded by PySide6 (offscreen) with plain-Qt stand-ins for the Slicer/CTK widgets,
  grabbed with ``QWidget.grab()``: ``Docs/screenshot-<module>.png`` (EXTENSION_SCREENSHOTURLS). They show the panel
  layout only, are labelled as mock-ups in the image, and are not Slicer screen captures.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZE, SCALE = 128, 4


def write_png(path: Path, rgba: np.ndarray) -> None:
    """Write an (H, W, 4) uint8 array as a PNG (filter 0 on every row)."""
    height, width, _ = rgba.shape
    raw = b"".join(b"\x00" + rgba[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


class Canvas:
    """Premultiplied-free RGBA float canvas at SCALE x the icon size; shapes are given in icon pixels."""

    def __init__(self) -> None:
        n = SIZE * SCALE
        self.rgba = np.zeros((n, n, 4))
        self.y, self.x = (np.mgrid[0:n, 0:n] + 0.5) / SCALE

    def paint(self, mask: np.ndarray, color, alpha: float | np.ndarray = 1.0) -> None:
        a = mask * alpha
        for c in range(3):
            self.rgba[..., c] = self.rgba[..., c] * (1 - a) + color[c] * a
        self.rgba[..., 3] = self.rgba[..., 3] * (1 - a) + a

    def ellipse(self, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
        t = np.deg2rad(angle)
        dx, dy = self.x - cx, self.y - cy
        u, v = dx * np.cos(t) + dy * np.sin(t), -dx * np.sin(t) + dy * np.cos(t)
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0

    def rounded_square(self, margin=4.0, radius=22.0) -> np.ndarray:
        lo, hi = margin + radius, SIZE - margin - radius
        dx = np.clip(self.x, lo, hi) - self.x
        dy = np.clip(self.y, lo, hi) - self.y
        return dx**2 + dy**2 <= radius**2

    def rectangle(self, x0, y0, x1, y1) -> np.ndarray:
        return (self.x >= x0) & (self.x <= x1) & (self.y >= y0) & (self.y <= y1)

    def image(self) -> np.ndarray:
        n = SIZE
        small = self.rgba.reshape(n, SCALE, n, SCALE, 4).mean(axis=(1, 3))
        return np.clip(np.round(small * 255), 0, 255).astype(np.uint8)


BACKGROUND = (0.11, 0.16, 0.22)
ANTERIOR, POSTERIOR = (0.85, 0.35, 0.25), (0.25, 0.6, 0.85)


def _slice(canvas: Canvas, cx=64.0, cy=62.0) -> None:
    """A grey MR-like axial slice: scalp, brain with a gentle texture, the midline fissure."""
    canvas.paint(canvas.ellipse(cx, cy, 46, 52), (0.82, 0.82, 0.80))
    brain = canvas.ellipse(cx, cy, 41, 47)
    shade = 0.45 + 0.12 * np.cos((canvas.x - cx) / 7.0) * np.cos((canvas.y - cy) / 9.0)
    for c in range(3):
        canvas.rgba[..., c] = np.where(brain, shade, canvas.rgba[..., c])
    canvas.paint(canvas.rectangle(cx - 0.8, cy - 46, cx + 0.8, cy - 20) & brain, (0.2, 0.2, 0.22))


def _arc(canvas: Canvas, cx, cy, radius, width, start, stop) -> np.ndarray:
    """A thick arc between two angles (degrees, 0 = +x, counter-clockwise on screen)."""
    distance = np.hypot(canvas.x - cx, canvas.y - cy)
    angle = np.rad2deg(np.arctan2(cy - canvas.y, canvas.x - cx)) % 360
    return (np.abs(distance - radius) <= width / 2) & (angle >= start) & (angle <= stop)


def icon_segment() -> np.ndarray:
    canvas = Canvas()
    canvas.paint(canvas.rounded_square(), BACKGROUND)
    _slice(canvas)
    # one large hippocampus: the head (anterior label) and the curved body and tail (posterior label)
    canvas.paint(_arc(canvas, 70, 62, 22, 11, 150, 300), POSTERIOR, 0.95)
    canvas.paint(canvas.ellipse(50, 50, 13, 10, angle=-35), ANTERIOR, 0.95)
    return canvas.image()


def icon_classify() -> np.ndarray:
    canvas = Canvas()
    canvas.paint(canvas.rounded_square(), BACKGROUND)
    _slice(canvas, cx=56)
    distance = np.hypot(canvas.x - 70, canvas.y - 48)
    canvas.paint(distance <= 22, (1.0, 0.25, 0.05), np.clip(1 - distance / 22, 0, 1) * 0.8)  # heatmap glow
    canvas.paint(distance <= 10, (1.0, 0.85, 0.2), np.clip(1 - distance / 10, 0, 1) * 0.9)
    canvas.paint(canvas.ellipse(70, 48, 6, 5), (0.95, 0.95, 0.9), 0.9)  # the lesion
    for i, height in enumerate((14, 34, 8)):  # class probabilities
        x0 = 88 + i * 10
        canvas.paint(canvas.rectangle(x0, 110 - height, x0 + 7, 110), (1.0, 0.85, 0.2) if i == 1 else (0.6, 0.7, 0.8))
    return canvas.image()


def icon_extension() -> np.ndarray:
    canvas = Canvas()
    canvas.paint(canvas.rounded_square(), BACKGROUND)
    _slice(canvas, cx=58)
    canvas.paint(_arc(canvas, 62, 72, 16, 8, 150, 300), POSTERIOR, 0.95)  # the segmentation glyph, smaller
    canvas.paint(canvas.ellipse(48, 63, 9, 7, angle=-35), ANTERIOR, 0.95)
    distance = np.hypot(canvas.x - 72, canvas.y - 38)  # and the classification heatmap
    canvas.paint(distance <= 14, (1.0, 0.5, 0.1), np.clip(1 - distance / 14, 0, 1) * 0.85)
    for i, height in enumerate((12, 30, 20)):
        x0 = 90 + i * 9
        canvas.paint(canvas.rectangle(x0, 112 - height, x0 + 6, 112), (0.95, 0.95, 0.9))
    return canvas.image()


def render_mockups() -> None:
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtCore import QFile, QIODevice, QObject
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import (
        QApplication,
        QComboBox,
        QDoubleSpinBox,
        QGroupBox,
        QHBoxLayout,
        QLabel,
        QSlider,
        QTableWidget,
        QVBoxLayout,
        QWidget,
    )

    class qMRMLWidget(QWidget):  # noqa: N801 (Slicer's class names)
        pass

    class ctkCollapsibleButton(QGroupBox):  # noqa: N801
        pass

    class qMRMLNodeComboBox(QComboBox):  # noqa: N801
        pass

    class ctkComboBox(QComboBox):  # noqa: N801
        pass

    class qMRMLTableView(QTableWidget):  # noqa: N801
        pass

    class ctkSliderWidget(QWidget):  # noqa: N801
        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self.slider, self.spinBox = QSlider(), QDoubleSpinBox()
            self.slider.setOrientation(self.slider.orientation().Horizontal)
            layout.addWidget(self.slider)
            layout.addWidget(self.spinBox)

    class qMRMLSegmentSelectorWidget(qMRMLWidget):  # noqa: N801
        def __init__(self, parent=None):
            super().__init__(parent)
            layout = QVBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            for text in ("Segmentation", "Segment"):
                box = QComboBox()
                box.setPlaceholderText(text)
                layout.addWidget(box)

    app = QApplication.instance() or QApplication([])
    card = REPO / "CADExtension" / "cadcore" / "models" / "hippocampus-unet" / "model.json"
    card_text = json.loads(card.read_text()) if card.is_file() else {}
    labels = [str(label["name"]) for label in card_text.get("labels", []) if int(label.get("value", 1)) != 0]
    for module, width in (("CADSegment", 420), ("CADClassify", 420)):
        loader = QUiLoader()
        for cls in (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, ctkComboBox, qMRMLTableView,
                    ctkSliderWidget, qMRMLSegmentSelectorWidget):
            loader.registerCustomWidget(cls)
        handle = QFile(str(REPO / module / "Resources" / "UI" / f"{module}.ui"))
        handle.open(QIODevice.ReadOnly)
        panel = loader.load(handle)
        handle.close()
        for box in panel.findChildren(ctkCollapsibleButton):
            collapsed = bool(box.property("collapsed"))
            box.setTitle(("▸ " if collapsed else "▾ ") + str(box.property("text")))
            for child in box.findChildren(QWidget):
                child.setVisible(not collapsed)
            if collapsed:
                box.setMaximumHeight(28)
        for slider in panel.findChildren(ctkSliderWidget):
            slider.spinBox.setRange(float(slider.property("minimum")), float(slider.property("maximum")))
            slider.spinBox.setSingleStep(float(slider.property("singleStep")))
            slider.spinBox.setValue(float(slider.property("value")))
            slider.slider.setValue(int(100 * float(slider.property("value")) / float(slider.property("maximum"))))
        for combo in panel.findChildren(qMRMLNodeComboBox):
            name = combo.objectName()
            combo.addItem("hippocampus_015" if name == "inputVolumeSelector" else str(combo.property("noneDisplay")
                                                                                        or "None"))
        for combo in panel.findChildren(QComboBox):
            if combo.objectName() == "deviceSelector":
                combo.addItems(["auto", "cpu", "cuda", "mps"])
        for table in panel.findChildren(qMRMLTableView):
            table.setColumnCount(2)
            table.setHorizontalHeaderLabels(["Class", "Probability"] if "probability" in table.objectName()
                                            else ["Feature", "Value"])
        model = panel.findChild(QObject, "modelSelector")
        description = panel.findChild(QObject, "modelDescriptionLabel")
        if module == "CADSegment":
            model.addItem("hippocampus-unet")
            description.setText(f"{card_text.get('description') or '(description from the model card)'}\n"
                                f"Modality: {card_text.get('modality') or '(from the model card)'}\n"
                                f"Labels: {', '.join(labels) or '(from the model card)'}")
        else:
            description.setText("Classification models imported with \"Manage models…\" are listed here.")
        frame = QWidget()
        layout = QVBoxLayout(frame)
        layout.addWidget(panel)
        note = QLabel(f"Mock-up: {module}.ui rendered by PySide6 with Qt stand-ins for the Slicer/CTK widgets "
                      "(not a Slicer screen capture).")
        note.setWordWrap(True)
        note.setStyleSheet("color: #666; font-size: 10px")
        layout.addWidget(note)
        frame.resize(width, 10)
        frame.adjustSize()
        frame.resize(width, frame.sizeHint().height())
        target = REPO / "Docs" / f"screenshot-{module.lower()}.png"
        if not frame.grab().save(str(target)):
            sys.exit(f"could not write {target}")
        print(target.relative_to(REPO))
    app.processEvents()


def main() -> None:
    for module, draw in (("CADSegment", icon_segment), ("CADClassify", icon_classify),
                         ("CADExtension", icon_extension)):
        path = REPO / module / "Resources" / "Icons" / f"{module}.png"
        write_png(path, draw())
        print(path.relative_to(REPO))
    render_mockups()


if __name__ == "__main__":
    main()
