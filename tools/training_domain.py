"""Write the ``training_domain`` of the shipped segmentation models into their cards (the OOD guard's reference).

    .venv/bin/python tools/training_domain.py [--data ../shared/data] [--models CADExtension/cadcore/models]
                                              [--only hippocampus-unet ...] [--dry-run]

For each model ``cad segment`` runs (guided models are not: ``cad interact`` has the user's clicks to go by):

* ``hippocampus-unet``: measured on its training images, the MSD Task04 cases its card does not hold out (the
  card's ``training.split.val``), with :func:`cadcore.segmentation.ood_guard.measure_training_domain`: per-axis field
  of view and spacing in the card's working orientation, intensity statistics after its normalisation.
* ``brain-tumour-cascade``: measured on its 14 training scans, the TCIA ``resampled256`` copies of the patients its
  card does not hold out, corrected exactly as ``benchmarks/tumour_data.py`` corrected them for training (padding
  slices dropped, nominal 0.86 x 0.86 x 6.5 mm spacing): the coarse stage saw these whole volumes, so their field
  of view is the cascade's input domain (the fine stage's crops are not).
* the whole-head pipelines (``brain-mask``, ``brain-structures``, ``brain-tissue``, ``brain-parcellation``,
  ``hippocampus-whole-head``): their training data are not published, and each conforms the input to a 256 mm head
  at 1 mm itself, so a DECLARED whole-head domain (no intensity statistics: their normalisation is their own) that
  never warns on a whole-head T1 (1-2.6 mm voxels, 130-256 mm fields of view) and still warns on a 40 mm crop or on
  voxels over 4 mm. ``source`` says it is declared.

Editing ``model.json`` leaves the weights' sha256 (which covers ``model.safetensors`` only) valid. The card is
parsed by the engine before it is written; a card that has no ``training_domain`` yet gets it appended as the last
field, so the rest of the file keeps its bytes.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CADExtension"))

from cadcore.registry.card_reader import parse_card  # noqa: E402
from cadcore.segmentation.ood_guard import measure_training_domain  # noqa: E402

WHOLE_HEAD = {"field_of_view_mm": {"min": [100.0, 100.0, 100.0], "max": [300.0, 300.0, 300.0]},
              "spacing_mm": {"min": [0.5, 0.5, 0.5], "max": [2.0, 2.0, 2.0]}}
WHOLE_HEAD_SOURCE = ("declared, not measured (training data not published): a whole-head 3D T1 scan, which the "
                     "pipeline conforms to 256 mm at 1 mm")
WHOLE_HEAD_MODELS = {"brain-mask": "ANY", "brain-structures": "MR", "brain-tissue": "MR", "brain-parcellation": "MR",
                     "hippocampus-whole-head": "MR"}


def hippocampus_images(data: Path, card) -> list[Path]:
    held_out = set(card.validation_ids)
    folder = data / "msd_task04_hippocampus" / "imagesTr"
    images = [p for p in sorted(folder.glob("*.nii.gz")) if p.name[:-len(".nii.gz")] not in held_out]
    if not held_out or not images:
        raise SystemExit(f"{folder}: no training images (or the card lists no held-out cases)")
    return images


def tumour_images(data: Path, card) -> list:
    """The corrected resampled256 training scans, in memory (never written)."""
    import SimpleITK as sitk
    from tumour_scans import corrected, slices_with_content

    root = data / "tcia_brain_tumor_progression"
    held_out = set(card.validation_ids)
    with open(root / "cases.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["subset"] == "resampled256"]
    images = []
    for row in rows:
        if Path(row["image"]).name[:-len(".nii.gz")] in held_out:
            continue
        image = sitk.ReadImage(str(root / row["image"]))
        images.append(corrected(image, slices_with_content(image)))
    return images


def domain_for(model_id: str, card, data: Path) -> dict[str, Any] | None:
    if model_id in WHOLE_HEAD_MODELS:
        return {"modality": WHOLE_HEAD_MODELS[model_id], **WHOLE_HEAD, "source": WHOLE_HEAD_SOURCE}
    if model_id == "hippocampus-unet":
        return measure_training_domain(hippocampus_images(data, card), card.preprocessing, "MR",
                                       "measured by tools/training_domain.py on the MSD Task04 training split "
                                       "(the cases the card does not hold out)")
    if model_id == "brain-tumour-cascade":
        return measure_training_domain(tumour_images(data, card), card.preprocessing, "MR",
                                       "measured by tools/training_domain.py on the 14 training scans (TCIA "
                                       "resampled256 copies, padding dropped, nominal 0.86 x 0.86 x 6.5 mm)")
    return None


def with_domain(text: str, domain: dict[str, Any]) -> str:
    """The card's text with ``training_domain`` set: appended as the last field when new (the rest keeps its
    bytes), the whole card re-serialised when it replaces an older one."""
    data = json.loads(text)
    if "training_domain" not in data and text.rstrip().endswith("}"):
        block = json.dumps({"training_domain": domain}, indent=2)[1:-1].strip("\n")
        return text.rstrip()[:-1].rstrip() + ",\n" + block + "\n}\n"
    data["training_domain"] = domain
    return json.dumps(data, indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", type=Path, default=REPO / "CADExtension" / "cadcore" / "models")
    parser.add_argument("--only", nargs="*", default=None, help="model ids (default: every shipped one it knows)")
    parser.add_argument("--dry-run", action="store_true", help="print the domains, write nothing")
    args = parser.parse_args()
    for folder in sorted(p for p in args.models.iterdir() if (p / "model.json").is_file()):
        if args.only and folder.name not in args.only:
            continue
        path = folder / "model.json"
        text = path.read_text()
        card = parse_card(json.loads(text), path)
        domain = domain_for(card.id, card, args.data)
        if domain is None:
            continue
        updated = with_domain(text, domain)
        parse_card(json.loads(updated), path)  # the engine must read what is written
        print(f"{card.id}: {json.dumps(domain)}")
        if not args.dry_run:
            tmp = path.with_name(".model.json.tmp")
            tmp.write_text(updated)
            tmp.replace(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
