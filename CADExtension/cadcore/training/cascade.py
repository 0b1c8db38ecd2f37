"""``cad train --cascade``: a coarse network on whole volumes at low resolution, a fine one on ROI crops, one package.

Why a cascade: for a small target in a large volume (a tumour filling 0.01-1 % of a head scan) a full-resolution
network spends almost all of its time on background. The coarse network only has to say *where*: it is trained on
whole volumes resampled to a coarse spacing with a patch covering most of the volume, so it sees the context. The
fine network only has to say *what exactly*: it is trained at full resolution on crops around the target.

The crops are made the way ``cad segment`` makes its region (:mod:`cadcore.segmentation.cascade`): the target's bounding
box in the input's own voxels, plus a margin in millimetres, cut with ``RegionOfInterest`` so the crop keeps its
physical geometry (oblique directions included), and normalised on its own. At inference the box comes from the coarse
prediction, so it is looser or tighter than the truth by up to a coarse voxel or so: the training crops therefore draw
each side's margin at random (``margin * U(1 - jitter, 1 + jitter)``, seeded); validation crops use the exact margin, so
checkpoint choice scores the crops inference will mostly see. A case without any target gets a crop of the median crop
size at a random place, which teaches the fine network what a coarse false positive looks like.

The coarse network has the fine network's channels unless told otherwise: at the coarse grid it is cheap anyway,
and on the brain-tumour set an 8-16-32-64 coarse DynUNet still predicted no tumour at all after 30 epochs
(validation Dice 0.0: with the whole head in one window the target is ~0.5 % of the voxels), while 16-32-64-128
reached 0.32 by epoch 50.

Both stages keep the SAME split: the validation cases are computed once (the dataset's ``validation`` list, else the
seeded split of ``cad train``) and written as an explicit ``validation`` list into both stages' dataset files. Crop
files are named after their case, so the crop ids are the case ids and ``cad evaluate --split val`` works on the
whole volumes. The crops are cut first (they need no network, and a bad label then fails in seconds rather than
after the coarse stage). Everything the stages write lies under ``OUTPUT/cascade/`` (``whole_volumes.json``, the crops'
``dataset.json`` with ``imagesTr/`` and ``labelsTr/``, and the two stage packages ``coarse/`` and ``fine/`` with their
logs); the package in ``OUTPUT`` holds both networks in one safetensors file under ``coarse.`` and ``fine.``.
This module only calls :func:`.segmentation.train`; it never changes how a stage trains. ``--init`` (transfer
learning) from a single-stage model applies to the fine stage, whose architecture it takes, and the coarse stage
starts from scratch; ``--init`` from a cascade (fine-tuning a shipped cascade on one's own cases) starts each stage
from the same stage of the parent, at the parent's coarse spacing and patch unless ``--coarse-*`` say otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.io.datasets import Case, Dataset, dataset_description, dataset_entry, load_dataset
from cadcore.io.images import check_same_grid, read_image, read_volume
from cadcore.io.writing import refuse_existing, write_json
from cadcore.registry.card_reader import trained_model_id
from cadcore.registry.locations import CARD_NAME
from cadcore.registry.networks import build_network, divisor_of, dynunet_spec, strides_for
from cadcore.registry.packages import ModelPackage, find_model, save_package
from cadcore.training.config import CascadeOptions, TrainConfig
from cadcore.training.losses import IGNORE_LABEL  # a pseudo-label's "unknown": never a target to crop around
from cadcore.training.segmentation import check_patch, median_spacing, network_for, oriented_header, split_for, train
from cadcore.training.transfer import check_parent_overlap, parent_label_values

STAGES_DIR = "cascade"
COARSE_PATCH_CAP = 128  # voxels per axis: larger coarse patches cost memory for no extra context


def check_flags(values: dict[str, Any]) -> None:
    """Refuse cascade options that would be silently ignored (and ``--cascade`` for a classifier)."""
    if values.get("cascade"):
        if values.get("task") == "classify":
            raise CadError("--cascade trains segmentation models only (--task segment)")
        return
    stray = [f"--{name.replace('_', '-')}" for name in CascadeOptions.__dataclass_fields__
             if values.get(name) is not None]
    if stray:
        raise CadError(f"{', '.join(stray)} only apply to --cascade")


def default_coarse_spacing(fine: list[float]) -> list[float]:
    """Isotropic at 4x the finest axis, but never finer than an axis already is: 1 mm isotropic data gets 4 mm,
    0.86 x 0.86 x 6.5 mm MR gets 3.44 x 3.44 x 6.5 mm (its 6.5 mm slices cannot be made any coarser usefully)."""
    target = 4.0 * min(fine)
    return [round(max(float(s), target), 4) for s in fine]


def default_coarse_patch(cases: list[Case], config: TrainConfig, divisor: list[int]) -> list[int]:
    """The median volume at the coarse spacing, each edge rounded up to the network's divisor (capped): the coarse
    network then sees (almost) the whole volume in one window, which is what lets it find the target."""
    extent = np.median(np.array([oriented_header(c.image, config.orientation, extent=True) for c in cases]), axis=0)
    voxels = extent / np.array(config.spacing)
    patch = []
    for size, div in zip(voxels, divisor):
        cap = COARSE_PATCH_CAP - COARSE_PATCH_CAP % div
        patch.append(int(min(cap, max(div, div * np.ceil(size / div - 0.25)))))  # a quarter-divisor short rounds down
    return patch


def split_of(dataset: Dataset, config: TrainConfig) -> tuple[list[Case], list[Case]]:
    """``cad train``'s own split (:func:`.segmentation.split_for`), computed once for both stages and checked."""
    train_cases, val_cases = (list(part) for part in split_for(config, dataset))
    if not val_cases or not train_cases:
        raise CadError("a cascade needs at least one training and one validation case", dataset.root)
    ids = [c.id for c in train_cases + val_cases]
    if len(set(ids)) != len(ids):
        raise CadError("case ids must be unique for a cascade (crops are named after their case)", dataset.root)
    return train_cases, val_cases


def target_box(label: sitk.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive (low, high) input-voxel (I, J, K) corners of every labelled voxel, or None."""
    values = sitk.GetArrayViewFromImage(label)
    hits = np.argwhere((values > 0) & (values != IGNORE_LABEL))
    if hits.size == 0:
        return None
    return hits.min(0)[::-1], hits.max(0)[::-1]


def crop_region(image: sitk.Image, box: tuple[np.ndarray, np.ndarray], margins_mm: np.ndarray) -> tuple[list, list]:
    """``box`` plus per-side margins (``margins_mm``: (2, 3), low and high sides, mm), clipped: (index, size)."""
    spacing, size = np.array(image.GetSpacing()), np.array(image.GetSize())
    start = np.clip(np.floor(box[0] - margins_mm[0] / spacing), 0, size - 1).astype(int)
    stop = np.clip(np.ceil(box[1] + margins_mm[1] / spacing) + 1, start + 1, size).astype(int)
    return [int(v) for v in start], [int(v) for v in stop - start]


def random_region(image: sitk.Image, extent_mm: np.ndarray, rng: np.random.Generator) -> tuple[list, list]:
    """A box of ``extent_mm`` (clipped to the image) at a random place: the crop of a case without target."""
    size = np.array(image.GetSize())
    edge = np.clip(np.round(extent_mm / np.array(image.GetSpacing())), 1, size).astype(int)
    start = np.array([rng.integers(0, n - e + 1) for n, e in zip(size, edge)])
    return [int(v) for v in start], [int(v) for v in edge]


def write_crops(cases: list[Case], jitter: bool, options: CascadeOptions, folder: Path, rng: np.random.Generator,
                extent_mm: np.ndarray | None) -> tuple[list[dict[str, Any]], dict[str, Any], list[Case]]:
    """Cut and write the image and label crop of each case; return the dataset entries, what was cut (for the
    dataset file) and, while ``extent_mm`` is None, the cases without target (cut later at the median crop size)."""
    entries, info, empty = [], {}, []
    for case in cases:
        if case.label is None:
            raise CadError("case has no label", case.image)
        image, label = read_volume(case.image), read_image(case.label)
        check_same_grid(image, label, case.label, case.image)
        box = target_box(label)
        if box is None:
            if extent_mm is None:
                empty.append(case)
                continue
            index, size = random_region(image, extent_mm, rng)
        else:
            factors = rng.uniform(1 - options.roi_jitter, 1 + options.roi_jitter, (2, 3)) if jitter else np.ones((2, 3))
            index, size = crop_region(image, box, options.roi_margin * factors)
        image_path, label_path = folder / "imagesTr" / f"{case.id}.nii.gz", folder / "labelsTr" / f"{case.id}.nii.gz"
        sitk.WriteImage(sitk.RegionOfInterest(image, size, index), str(image_path), True)
        sitk.WriteImage(sitk.RegionOfInterest(label, size, index), str(label_path), True)
        entries.append(dataset_entry(f"./imagesTr/{image_path.name}", f"./labelsTr/{label_path.name}", case.pseudo,
                                     labels_present=case.labels_present))
        info[case.id] = {"index": index, "size": size, "target": box is not None,
                         "extent_mm": [round(float(n * s), 2) for n, s in zip(size, image.GetSpacing())]}
    return entries, info, empty


def make_crops(train_cases: list[Case], val_cases: list[Case], dataset: Dataset, options: CascadeOptions,
               folder: Path, seed: int) -> Path:
    """Write the fine stage's dataset (crops of image and label, same split) into ``folder``; return its json."""
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_entries, train_info, train_empty = write_crops(train_cases, True, options, folder, rng, None)
    val_entries, val_info, val_empty = write_crops(val_cases, False, options, folder, rng, None)
    extents = [v["extent_mm"] for v in {**train_info, **val_info}.values()]
    if not extents:
        raise CadError("no case has any labelled voxel; a cascade needs targets to crop", dataset.root)
    median = np.median(np.array(extents), axis=0)
    more, more_info, _ = write_crops(train_empty, True, options, folder, rng, median)
    train_entries, train_info = train_entries + more, {**train_info, **more_info}
    more, more_info, _ = write_crops(val_empty, False, options, folder, rng, median)
    val_entries, val_info = val_entries + more, {**val_info, **more_info}
    crops = {"margin_mm": options.roi_margin, "jitter": options.roi_jitter, "seed": seed,
             "cases": {**train_info, **val_info}}
    path = folder / "dataset.json"
    write_json(path, dataset_description(dataset, train_entries, val_entries, cascade_crops=crops))
    return path


def crops_or_nothing(train_cases: list[Case], val_cases: list[Case], dataset: Dataset, options: CascadeOptions,
                     output: Path, seed: int) -> Path:
    """Cut the crops before any training: they need no network, and reading every label first means a bad case
    (no label, another grid, no target anywhere) fails in seconds, not after the coarse stage. On such a failure
    the folders this call created are removed again, so bad input leaves nothing behind."""
    created = [p for p in (output, output / STAGES_DIR) if not p.exists()]
    (output / STAGES_DIR).mkdir(parents=True, exist_ok=True)
    try:
        return make_crops(train_cases, val_cases, dataset, options, output / STAGES_DIR, seed)
    except BaseException:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)
        raise


def finished(folder: Path, epochs: int) -> ModelPackage | None:
    """A stage package from an earlier run that trained all its epochs (reused by ``--resume``)."""
    if not (folder / CARD_NAME).is_file():
        return None
    package = find_model(folder)
    return package if package.card.trained_epochs == epochs else None


def run_stage(config: TrainConfig, name: str) -> ModelPackage:
    """Train one stage; an interrupted stage (Ctrl-C saves its checkpoint) stops the cascade there."""
    if config.resume and (package := finished(Path(config.output), config.epochs)):
        return package
    package = train(config)
    done = package.card.trained_epochs or 0
    if done < config.epochs:
        raise CadError(f"training interrupted in the {name} stage at epoch {done}/{config.epochs}; its checkpoint is "
                       "kept: run the same command with --resume to continue", config.output)
    return package


def stage_configs(config: TrainConfig, options: CascadeOptions, train_cases: list[Case],
                  n_classes: int) -> tuple[TrainConfig, TrainConfig]:
    """Both stages' configs, checked before anything is trained (a bad fine patch must not surface after the
    coarse stage has run for an hour)."""
    if options.roi_margin < 0:
        raise CadError(f"--roi-margin must be >= 0 mm, got {options.roi_margin}")
    if not 0 <= options.roi_jitter < 1:
        raise CadError(f"--roi-jitter must be in [0, 1), got {options.roi_jitter}")
    parent = cascade_parent(config.init)
    parent_coarse = parent.card.cascade.coarse if parent and parent.card.cascade else None
    fine_spacing = config.spacing or median_spacing(train_cases, config.orientation)
    coarse_spacing = options.coarse_spacing or (parent_coarse.preprocessing["spacing"]
                                                if parent_coarse else default_coarse_spacing(fine_spacing))
    for name, spacing in (("--spacing", fine_spacing), ("--coarse-spacing", coarse_spacing)):
        if len(spacing) != 3 or min(spacing) <= 0:
            raise CadError(f"{name} needs three positive values in mm, got {spacing}")
    base = trained_model_id(config.model_id, config.output)
    fine = replace(config, spacing=list(fine_spacing), max_cases=None, model_id=f"{base}-fine",
                   init_stage="fine" if parent else None, description="fine stage of a cascade (ROI crops)",
                   progress_prefix="fine stage, ")
    coarse_network = parent_coarse.network["params"] if parent_coarse else {}
    if coarse_network and options.coarse_filters and list(options.coarse_filters) != coarse_network.get("filters"):
        raise CadError(f"--coarse-filters {options.coarse_filters} differ from the --init cascade's coarse network "
                       f"({coarse_network.get('filters')}), whose weights the coarse stage starts from")
    coarse = replace(config, spacing=list(coarse_spacing),
                     filters=list(coarse_network.get("filters") or options.coarse_filters or config.filters),
                     epochs=options.coarse_epochs or config.epochs, init=config.init if parent else None,
                     init_stage="coarse" if parent else None,
                     freeze_encoder_epochs=config.freeze_encoder_epochs if parent else 0,
                     model_id=f"{base}-coarse", max_cases=None, description="coarse stage of a cascade",
                     progress_prefix="coarse stage, ")
    if len(coarse.filters) < 3:  # DynUNet's minimum
        raise CadError(f"--coarse-filters needs at least three levels, got {coarse.filters}")
    divisor = divisor_of(dynunet_spec(1, n_classes, coarse.filters, strides_for(coarse.spacing, len(coarse.filters))))
    parent_patch = parent_coarse.inference.patch_size if parent_coarse else None
    coarse.patch_size = list(options.coarse_patch_size or parent_patch
                             or default_coarse_patch(train_cases, coarse, divisor))
    for name, stage in (("--coarse-patch-size", coarse), ("--patch-size", fine)):
        if len(stage.patch_size) != 3 or min(stage.patch_size) < 1:
            raise CadError(f"{name} needs three positive values, got {stage.patch_size}")
    for stage in (coarse, fine):  # a patch or network that cannot work fails now, not in an hour
        if stage.init:
            from cadcore.training.transfer import parent_spec

            spec = parent_spec(stage.init, "DynUNet", n_classes, list(stage.spacing), stage.init_stage)[1]
            check_patch(stage.patch_size, spec, " (the --init network)")
        else:
            build_network(network_for(stage, n_classes), for_training=True)
    return coarse, fine


def cascade_parent(init: str | None) -> ModelPackage | None:
    """The ``--init`` package when it is a cascade: then each stage starts from its own stage's weights, and the
    coarse stage keeps the parent's coarse spacing, filters and patch unless told otherwise (``--coarse-*``)."""
    if not init:
        return None
    parent = find_model(init)
    return parent if parent.card.cascade is not None else None


def combined_card(config: TrainConfig, options: CascadeOptions, coarse: ModelPackage, fine: ModelPackage,
                  val_cases: list[Case]) -> dict[str, Any]:
    """The fine stage's card (network, preprocessing, inference, labels) plus the ``cascade`` section."""
    card, coarse_sections = fine.card.to_dict(), coarse.card.to_dict()
    card.pop("weights", None)
    card["id"] = trained_model_id(config.model_id, config.output)
    card["description"] = config.description or (
        f"Cascaded 3D U-Net (coarse {coarse.card.preprocessing['spacing']} mm, fine "
        f"{fine.card.preprocessing['spacing']} mm) trained with cad train --cascade on {fine.card.training['data']}")
    card["cascade"] = {"coarse": {key: coarse_sections[key] for key in ("network", "preprocessing", "inference")},
                       "margin_mm": options.roi_margin}
    card["cascade"]["coarse"]["inference"]["overlap"] = 0.25  # it only has to find the target
    card["training_domain"] = coarse_sections.get("training_domain")  # whole volumes (the input), not the crops
    fine_training, coarse_training = card["training"], coarse_sections["training"]
    card["training"] = {
        **{k: fine_training[k] for k in ("data", "licence", "n_train", "n_val", "seed")},
        **({"parent": {k: v for k, v in fine_training["parent"].items() if k != "parent_stage"}}
           if "parent" in fine_training else {}),  # the --init package; "stages" say which stage started from what
        "split": {"val": [c.id for c in val_cases], "by": "explicit validation list, same for both stages"},
        "epochs": fine_training["epochs"],
        "best_epoch": fine_training["best_epoch"],
        "seconds": coarse_training["seconds"] + fine_training["seconds"],
        "roi_crops": {"margin_mm": options.roi_margin, "jitter": options.roi_jitter,
                      "dataset": f"{STAGES_DIR}/dataset.json"},
        "stages": {"coarse": coarse_training, "fine": fine_training},
    }
    card["metrics"] = {
        "validation_dice_working_space": fine.card.metrics["validation_dice_working_space"],
        "validation_dice_note": "fine stage on validation ROI crops (exact margin); coarse stage on whole volumes",
        "coarse_validation_dice_working_space": coarse.card.metrics["validation_dice_working_space"],
    }
    return card


def train_cascade(config: TrainConfig, options: CascadeOptions) -> ModelPackage:
    """Check everything, cut the crops, train the coarse then the fine stage, export one package into
    ``config.output``."""
    output = Path(config.output)
    stages = output / STAGES_DIR
    trained_model_id(config.model_id, output)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CadError("--cascade does not run under torchrun; train it in one process")
    refuse_existing((output / CARD_NAME).exists(), "a model package already exists here", output, config.force,
                    config.resume, "replace it")
    refuse_existing(any((stages / s / CARD_NAME).exists() or (stages / s / "training").exists()
                        for s in ("coarse", "fine")), "an unfinished cascade training is here", stages, config.force,
                    config.resume, "restart")
    dataset = load_dataset(config.data)
    train_cases, val_cases = split_of(dataset, config)
    parent = find_model(config.init) if config.init else None
    if parent is not None:  # refused before any crop is written, not inside a stage
        check_parent_overlap(parent, dataset, train_cases, val_cases, config.allow_overlap,
                             config.data)
    n_classes = len(sorted(dataset.label_names) or (parent_label_values(parent.card) if parent else []) or [1]) + 1
    coarse_config, fine_config = stage_configs(config, options, train_cases, n_classes)

    crops = crops_or_nothing(train_cases, val_cases, dataset, options, output, config.seed)
    whole = stages / "whole_volumes.json"
    as_entries = [[dataset_entry(c.image, c.label, c.pseudo, labels_present=c.labels_present) for c in group]
                  for group in (train_cases, val_cases)]
    write_json(whole, dataset_description(dataset, *as_entries))
    coarse = run_stage(replace(coarse_config, data=str(whole), output=str(stages / "coarse")), "coarse")
    fine = run_stage(replace(fine_config, data=str(crops), output=str(stages / "fine")), "fine")

    state = {**{f"coarse.{k}": v for k, v in coarse.load_state_dict().items()},
             **{f"fine.{k}": v for k, v in fine.load_state_dict().items()}}
    package = save_package(output, combined_card(config, options, coarse, fine, val_cases), state)
    summary = {"coarse": json.loads((stages / "coarse" / "training_summary.json").read_text()),
               "fine": json.loads((stages / "fine" / "training_summary.json").read_text())}
    write_json(output / "training_summary.json", summary)
    for stage, name, target in (("fine", "training_curves.png", "training_curves.png"),
                                ("fine", "training_log.csv", "training_log.csv"),
                                ("coarse", "training_curves.png", "training_curves_coarse.png")):
        if (stages / stage / name).is_file():  # the fine stage's curves are the package's (its Dice is the card's)
            shutil.copy2(stages / stage / name, output / target)
    return package
