"""``cad train --unlabelled``: semi-supervised self-training (teacher → pseudo-labels → student, K rounds).

Round 0 trains a teacher on the labelled cases alone (plain :func:`.segmentation.train`). Each later round
pseudo-labels every unlabelled volume with the previous round's model (:mod:`cadcore.training.pseudo_labels`: flip TTA,
unsure voxels ignored), writes a ``dataset.json`` whose ``training`` list is the labelled training cases plus the
pseudo-labelled volumes and whose ``validation`` list is the teacher's validation cases, and trains a student on
it. Validation therefore never sees a pseudo-label, and every round is scored on the same cases, so the validation
Dice per round in the card is comparable. The last student is exported into OUTPUT, whatever its score: K rounds is
what was asked for, and the card shows every round's score to judge it by.

By default the student starts from scratch (or from ``--init``'s weights, as the teacher did), not from the teacher's
weights: that is the "noisy student" recipe (Xie et al., CVPR 2020). A student initialised with the teacher sits in the
teacher's minimum and, trained on the teacher's own answers, may mostly confirm its mistakes; a fresh student, trained
with augmentation on several times more volumes, has to generalise from them. ``--student-init teacher`` (every layer at
the full learning rate) and ``--student-augmentation`` (wider rotation and scaling for the student only) are there to
measure the alternatives; docs/research-results.md, "Training for researchers", gives what they did on hippocampus.

Layout: ``OUTPUT/self_training/round_0`` (teacher package), ``pseudo_<r>`` (pseudo-labels, ``dataset.json``,
``summary.json``), ``round_<r>`` (student package); OUTPUT holds the final package. Every input is checked before
any training starts. Ctrl-C stops the run with the current round's package and checkpoint in place (as ``cad train``
does); ``--resume`` skips finished rounds, reuses pseudo-labels made by the same teacher, and resumes the rest.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cadcore.errors import CadError
from cadcore.io.datasets import Case, Dataset, case_id, dataset_description, dataset_entry, load_dataset
from cadcore.io.images import VOLUME_SUFFIXES, read_volume, suffix_of
from cadcore.io.writing import refuse_existing, write_json
from cadcore.registry.card_reader import trained_model_id
from cadcore.registry.locations import CARD_NAME
from cadcore.registry.packages import ModelPackage, find_model, save_package
from cadcore.training.config import SelfTrainOptions, TrainConfig
from cadcore.training.losses import IGNORE_LABEL
from cadcore.training.segmentation import split_for, train

REPORT_FILES = ("training_log.csv", "training_curves.png", "training_summary.json")


def check_flags(values: dict[str, Any]) -> None:
    """Refuse self-training options that would be silently ignored."""
    if values.get("unlabelled"):
        if values.get("task") == "classify" or values.get("cascade"):
            raise CadError("--unlabelled self-trains single-stage segmentation models (not --task classify or "
                           "--cascade)")
        return
    stray = [flag for flag, key in (("--rounds", "rounds"), ("--confidence", "confidence"),
                                    ("--student-epochs", "student_epochs"), ("--student-init", "student_init"),
                                    ("--student-augmentation", "student_augmentation"))
             if values.get(key) is not None]
    stray += ["--no-pseudo-tta"] if values.get("pseudo_tta") is False else []
    if stray:
        raise CadError(f"{', '.join(stray)} only apply to self-training (--unlabelled)")


def unlabelled_volumes(source: str | Path) -> list[Path]:
    """The volumes named by ``--unlabelled``: a folder's volume files (sorted), or a list file's paths (relative
    ones are relative to the list file; blank lines and ``#`` comments are skipped). Nothing is read yet."""
    source = Path(source)
    if not source.exists():
        raise CadError("unlabelled folder or list file not found", source)
    if source.is_dir():
        volumes = sorted(p for p in source.iterdir() if p.is_file() and suffix_of(p) in VOLUME_SUFFIXES)
        if not volumes:
            raise CadError(f"no volumes ({', '.join(VOLUME_SUFFIXES)}) in the unlabelled folder", source)
        return volumes
    try:
        lines = source.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CadError(f"cannot read the unlabelled list ({exc})", source) from exc
    volumes = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        path = Path(text) if Path(text).is_absolute() else source.parent / text
        if not path.exists():
            raise CadError(f"unlabelled volume not found (line {number} of {source})", path)
        volumes.append(path)
    if not volumes:
        raise CadError("the unlabelled list names no volume", source)
    return volumes


def check_inputs(config: TrainConfig, options: SelfTrainOptions) -> tuple[Dataset, list[Case], list[Case], list[Path]]:
    """Every check that can fail, before anything is written: options, labelled data, each unlabelled volume."""
    output = Path(config.output)
    refuse_existing((output / CARD_NAME).exists(), "a model package already exists here", output, config.force,
                    config.resume, "replace it")
    refuse_existing((output / "self_training").exists(), "an unfinished self-training run is here",
                    output / "self_training", config.force, config.resume, "restart")
    if options.rounds < 1:
        raise CadError(f"--rounds must be at least 1, got {options.rounds}")
    if not 0.0 <= options.confidence <= 1.0:
        raise CadError(f"--confidence must be in [0, 1], got {options.confidence}")
    if options.student_epochs is not None and options.student_epochs < 1:
        raise CadError(f"--student-epochs must be at least 1, got {options.student_epochs}")
    if options.student_init not in ("scratch", "teacher"):
        raise CadError(f"--student-init must be scratch or teacher, got {options.student_init}")
    if not 0.0 <= options.student_augmentation <= 3.0:  # 3: rotations of up to 45 degrees, scaling by up to 45 %
        raise CadError(f"--student-augmentation must be in [0, 3], got {options.student_augmentation}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CadError("--unlabelled does not run under torchrun; start it as a single process")
    dataset = load_dataset(config.data)
    train_cases, val_cases = split_for(config, dataset)
    if not val_cases:
        raise CadError("self-training needs validation cases (at least 2 labelled cases)", config.data)
    volumes = unlabelled_volumes(options.unlabelled)
    labelled = {c.id for c in train_cases + val_cases}
    seen: set[str] = set()
    for path in tqdm(volumes, desc="checking unlabelled volumes", unit="volume", leave=False):
        cid = case_id(path)
        if cid in labelled:  # in validation it would leak; in training it would compete with its own label
            raise CadError(f"unlabelled volume has the same case id ({cid}) as a labelled case", path)
        if cid in seen:
            raise CadError(f"two unlabelled volumes have the case id {cid} (their pseudo-labels would collide)", path)
        seen.add(cid)
        read_volume(path)  # unreadable, 2D, NaN or constant: refused now, not after the teacher's training
    return dataset, train_cases, val_cases, volumes


def self_train(config: TrainConfig, options: SelfTrainOptions) -> ModelPackage:
    """Run K rounds of self-training and export the last student into ``config.output``; returns that package
    (or, when interrupted, the package of the round that was running)."""
    dataset, train_cases, val_cases, volumes = check_inputs(config, options)
    output = Path(config.output)
    work = output / "self_training"
    final_id = trained_model_id(config.model_id, output)
    student_epochs = options.student_epochs or config.epochs
    tta_axes = list(config.mirror_axes) if options.tta else []
    rounds: list[dict[str, Any]] = []

    teacher = first_teacher = run_round(replace(config, output=str(work / "round_0"), model_id=f"{final_id}-round0"))
    rounds.append(round_record(0, teacher, len(train_cases)))
    if interrupted(teacher, config.epochs):
        return teacher
    spacing = teacher.card.preprocessing["spacing"]  # every round works at the teacher's resolution
    for index in range(1, options.rounds + 1):
        try:
            pseudo, reused = pseudo_round(teacher, volumes, work / f"pseudo_{index}", options.confidence, tta_axes,
                                          config, dataset, train_cases, val_cases, index)
        except KeyboardInterrupt:
            tqdm.write(f"interrupted while pseudo-labelling for round {index}; the last model is in {teacher.folder}")
            return teacher
        # a student checkpoint is only resumed on the very pseudo-labels it was trained on; new ones restart it
        student_config = replace(config, data=str(work / f"pseudo_{index}" / "dataset.json"),
                                 output=str(work / f"round_{index}"), model_id=f"{final_id}-round{index}",
                                 epochs=student_epochs, spacing=spacing, max_cases=None,
                                 resume=config.resume and reused, force=config.force or config.resume,
                                 augmentation_strength=config.augmentation_strength * options.student_augmentation)
        if options.student_init == "teacher":
            student_config = replace(student_config, init=str(teacher.folder), init_stage=None,
                                     pretrained_lr_factor=1.0, freeze_encoder_epochs=0)
        tqdm.write(f"self-training round {index}/{options.rounds}: student on {len(train_cases)} labelled + "
                   f"{len(volumes)} pseudo-labelled volumes ({pseudo['kept_voxel_fraction']:.1%} of voxels kept)")
        student = run_round(student_config)
        record = round_record(index, student, len(train_cases) + len(volumes))
        record.update({k: pseudo[k] for k in ("kept_voxel_fraction", "kept_foreground_fraction")})
        record["teacher"] = {"id": teacher.id, "sha256": teacher.card.weights.sha256}
        rounds.append(record)
        if interrupted(student, student_epochs):
            return student
        teacher = student
    card = teacher.card.to_dict()
    card["id"] = final_id
    card["version"] = first_teacher.card.version  # students from the teacher would each add a minor step
    card["description"] = config.description or (
        f"3D U-Net self-trained (teacher on {len(train_cases)} labelled cases, {options.rounds} round(s) of "
        f"pseudo-labels on {len(volumes)} unlabelled volumes) with cad train on {dataset.name or dataset.root.name}")
    card["training"] = {**card["training"], "config": {**card["training"]["config"], "model_id": final_id}}
    for key in ("parent", "init"):  # the package's parent is the teacher's (--init), never a round of this run
        card["training"].pop(key, None)
        if key in first_teacher.card.training:
            card["training"][key] = copy.deepcopy(first_teacher.card.training[key])
    card["training"]["self_training"] = {
        "rounds": options.rounds, "confidence_threshold": options.confidence, "flip_tta_axes": tta_axes,
        "ignore_label": IGNORE_LABEL, "student_init": student_init(config, options),
        "student_augmentation": options.student_augmentation,
        "teacher_epochs": config.epochs, "student_epochs": student_epochs,
        "n_labelled": len(train_cases), "n_validation": len(val_cases), "n_unlabelled": len(volumes),
        "unlabelled": str(options.unlabelled), "labelled_data": dataset.name or str(dataset.root),
        "per_round": rounds, "best_round_by_validation": best_round(rounds),
    }
    warning = weaker_than_teacher(rounds, work / "round_0")
    if warning:
        tqdm.write(warning)
    package = save_package(output, card, teacher.load_state_dict())
    for name in REPORT_FILES:
        if (teacher.folder / name).exists():
            shutil.copy2(teacher.folder / name, output / name)
    return package


def student_init(config: TrainConfig, options: SelfTrainOptions) -> str:
    """What each student started from, for the card."""
    if options.student_init == "teacher":
        return "the previous round's model (every layer at the full learning rate)"
    return f"--init {config.init}" if config.init else "scratch"


def run_round(config: TrainConfig) -> ModelPackage:
    """Train one round's model, or (``--resume``) reuse it when that round already finished."""
    folder = Path(config.output)
    if config.resume and (folder / CARD_NAME).exists():
        package = find_model(folder)
        if (package.card.trained_epochs or 0) >= config.epochs:
            return package
    return train(config)


def interrupted(package: ModelPackage, epochs: int) -> bool:
    """train() turns Ctrl-C into an early export; the card's epoch count tells whether that happened."""
    if (package.card.trained_epochs or 0) >= epochs:
        return False
    tqdm.write(f"self-training stopped: {package.folder} holds that round's best model so far and its checkpoint; "
               "run the same command with --resume to continue")
    return True


def best_round(rounds: list[dict[str, Any]]) -> int:
    """The round whose model scored the best validation Dice (the first on ties)."""
    return max(rounds, key=lambda r: r["validation_dice"])["round"]


def weaker_than_teacher(rounds: list[dict[str, Any]], teacher_folder: Path) -> str | None:
    """A warning when the exported (last) student validates below the labelled-only teacher.

    The last student is exported as asked, but on small validation sets self-training can lose to its teacher
    (measured on hippocampus: in 2 of 3 splits, by 0.3 and 0.6 validation Dice points); a researcher must not take
    the self-trained model for the better one without being told.
    """
    teacher, last = rounds[0]["validation_dice"], rounds[-1]["validation_dice"]
    if len(rounds) < 2 or last >= teacher:
        return None
    return (f"warning: the self-trained model validates below its labelled-only teacher (Dice {last:.4f} < "
            f"{teacher:.4f}); the teacher is kept in {teacher_folder}: score both with cad evaluate before choosing")


def round_record(index: int, package: ModelPackage, n_train: int) -> dict[str, Any]:
    return {"round": index, "role": "teacher (labelled only)" if index == 0 else "student",
            "model": package.id, "weights_sha256": package.card.weights.sha256, "n_train": n_train,
            "validation_dice": package.card.metrics["validation_dice_working_space"]}


def pseudo_round(teacher: ModelPackage, volumes: list[Path], folder: Path, confidence: float, tta_axes: list[int],
                 config: TrainConfig, dataset: Dataset, train_cases: list[Case], val_cases: list[Case],
                 index: int) -> tuple[dict[str, Any], bool]:
    """Pseudo-label the volumes into ``folder`` and describe the student's dataset there; reused under --resume
    when the same teacher, threshold, flips and volumes made it. Returns the summary and whether it was reused."""
    from cadcore.device import pick_device
    from cadcore.training.pseudo_labels import label_volumes

    key = {"teacher_sha256": teacher.card.weights.sha256, "confidence": confidence, "flip_tta_axes": tta_axes,
           "volumes": [str(p) for p in volumes]}
    summary_path = folder / "summary.json"
    if config.resume and summary_path.exists() and (folder / "dataset.json").exists():
        previous = json.loads(summary_path.read_text())
        if previous.get("key") == key:
            return previous, True
    (folder / "dataset.json").unlink(missing_ok=True)  # stale until every new label file is written
    summary = label_volumes(teacher, volumes, folder, confidence, tta_axes, pick_device(config.device),
                            f"pseudo-labelling (round {index})")

    def entry(case: Case) -> dict[str, Any]:  # absolute: this file lives elsewhere than the user's dataset.json
        return dataset_entry(Path(case.image).resolve(), Path(case.label).resolve(), labels_present=case.labels_present)

    pseudo = [dataset_entry(Path(p).resolve(), Path(summary["files"][case_id(p)]).resolve(), pseudo=True)
              for p in volumes]
    spec = dataset_description(
        dataset, [entry(c) for c in train_cases] + pseudo, [entry(c) for c in val_cases],
        name=f"{dataset.name or dataset.root.name} + {len(volumes)} pseudo-labelled volumes (self-training round "
             f"{index}, teacher {teacher.id})")
    summary = {"key": key, **summary}
    write_json(summary_path, summary)
    write_json(folder / "dataset.json", spec)  # last: its presence means every label file is in place
    return summary, False
