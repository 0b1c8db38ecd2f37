"""``cad evaluate``: run a model over a dataset exactly as ``cad segment`` would, and score it.

Scores are computed on the input's own grid (after the round trip through working space and post-processing),
so they measure what a user gets. Dice per label; HD95 in millimetres (MONAI, with the image spacing).

A score on cases the model trained on is not a measure of how it generalises, so every case says whether it may
have been (``trained_on``, see :func:`held_out_marks`) and the report gives the mean Dice over all cases and over
the held-out ones (``mean_dice_held_out``, ``n_held_out``, ``n_trained_on``, ``held_out_basis``).

Partly labelled data (dataset.json ``labels_present``, label values as the model's): a label a case does not list
was not contoured there, so its "truth" of no voxels says nothing; it is not scored on that case (``null`` in the
case's ``dice``/``hd95``), and each label's summary is over the cases that list it, with their number (``n_cases``,
given only for such data: otherwise every label is scored on all the report's ``n_cases``, and the report keeps the
fields it always had). The mean Dice is over the labels scored on at least one case.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from tqdm import tqdm

from cadcore.errors import CadError
from cadcore.evaluation.metrics import dice, hd95
from cadcore.io.datasets import Case, Dataset, load_dataset, select_split
from cadcore.io.images import check_same_grid, read_image, read_volume
from cadcore.preprocessing.working_space import to_array
from cadcore.registry.card import ModelCard
from cadcore.registry.packages import find_model
from cadcore.segmentation.predict import segment_image


def score_case(prediction: np.ndarray, truth: np.ndarray, spacing, values: list[int],
               present: tuple[int, ...] | None = None) -> dict[str, dict[str, Any]]:
    """Dice and HD95 per label; ``None`` for a label the case's ``labels_present`` leaves out (not contoured)."""
    scores: dict[str, dict[str, Any]] = {"dice": {}, "hd95": {}}
    for value in values:
        if present is not None and value not in present:
            scores["dice"][str(value)] = scores["hd95"][str(value)] = None
            continue
        p, t = prediction == value, truth == value
        scores["dice"][str(value)] = round(dice(p, t), 5)
        distance = hd95(p, t, spacing)
        scores["hd95"][str(value)] = None if distance is None else round(distance, 4)
    return scores


def summarise(cases: list[dict[str, Any]], names: dict[int, str]) -> dict[str, Any]:
    """Per label, over the cases that scored it (all of them unless the data are partly labelled; then each label
    also says how many, ``n_cases``)."""
    partial = any("labels_present" in case for case in cases)
    per_label = {}
    for value, name in names.items():
        scored = [c for c in cases if c["dice"][str(value)] is not None]
        dices = [c["dice"][str(value)] for c in scored]
        distances = [c["hd95"][str(value)] for c in scored if c["hd95"][str(value)] is not None]
        per_label[str(value)] = {
            "name": name,
            **({"n_cases": len(scored)} if partial else {}),
            "dice_mean": round(float(np.mean(dices)), 5) if dices else None,
            "dice_std": round(float(np.std(dices)), 5) if dices else None,
            "dice_median": round(float(np.median(dices)), 5) if dices else None,
            "hd95_mean": round(float(np.mean(distances)), 4) if distances else None,
            "hd95_median": round(float(np.median(distances)), 4) if distances else None,
            "hd95_undefined_cases": len(dices) - len(distances),
        }
    return per_label


def held_out_marks(card: ModelCard, dataset: Dataset, cases: list[Case], split: str) -> tuple[dict[str, bool | None],
                                                                                             str]:
    """Case id -> True when the model may have trained on it, False when its card holds it out, None when unknown;
    and the basis of that answer, for the report.

    The card lists its held-out ids (``training.split.val``) and names its training data (``training.data``), not
    its training ids. The dataset is taken to be (a part of) the model's training data when the card names it
    (``dataset.json``'s ``name`` or the dataset's folder) or when it holds one of the card's held-out ids; then each
    case not on the held-out list may have been trained on. Otherwise nothing is claimed either way.
    """
    if split == "val":
        return {case.id: False for case in cases}, "split val: only the cases the model card lists as held out"
    held_out = set(card.validation_ids)
    data = card.training.get("data")
    named = data is not None and str(data) in {dataset.name, str(dataset.root)}
    shared = held_out & {case.id for case in cases}
    if not (named or shared):
        return {case.id: None for case in cases}, (
            f"unknown: the model card names other training data ({data!r}) and holds out none of these cases"
            if data is not None else "unknown: the model card records no training data")
    why = "the model card names this dataset as its training data" if named else (
        f"this dataset holds {len(shared)} of the model card's held-out cases")
    return {case.id: case.id not in held_out for case in cases}, (
        f"{why}: cases not on its held-out list ({len(held_out)} ids) may have been trained on")


def _mean_dice(cases: list[dict[str, Any]], names: dict[int, str]) -> float | None:
    """The mean of the per-label mean Dice over the labels these cases scored (None: nothing scored)."""
    means = [row["dice_mean"] for row in summarise(cases, names).values() if row["dice_mean"] is not None]
    return round(float(np.mean(means)), 5) if cases and means else None


def evaluate(model: str, data: str, split: str = "val", device: str = "auto", fast: bool = False) -> dict[str, Any]:
    package = find_model(model)
    if package.task != "segmentation":
        raise CadError(f"is a {package.task} model; this evaluation scores segmentation models", package.folder)
    if fast:
        package.card.fast_stage()  # no fast resolution: fail before scoring anything
    package.verify()
    dataset = load_dataset(data)
    cases = select_split(dataset, split, package.card.validation_ids)
    names = package.label_names()
    marks, basis = held_out_marks(package.card, dataset, cases, split)
    started = time.perf_counter()
    results = []
    for case in tqdm(cases, desc="evaluating", unit="case"):
        image = read_volume(case.image)
        if case.label is None:
            raise CadError("case has no label to score against", case.image)
        truth_image = read_image(case.label)
        check_same_grid(image, truth_image, case.label, case.image)
        case_started = time.perf_counter()
        result = segment_image(image, package, device, fast=fast)
        prediction = to_array(result.labels)
        truth = np.rint(to_array(truth_image)).astype(np.int64)
        scores = score_case(prediction, truth, image.GetSpacing(), sorted(names), case.labels_present)
        present = {} if case.labels_present is None else {"labels_present": list(case.labels_present)}
        results.append({"id": case.id, "trained_on": marks[case.id], **present, **scores,
                        "seconds": round(time.perf_counter() - case_started, 3)})
    per_label = summarise(results, names)
    known = all(mark is not None for mark in marks.values())
    held_out = [row for row in results if row["trained_on"] is False]
    trained_on = [row for row in results if row["trained_on"] is True]
    return {
        "model": package.id,
        "model_version": package.version,
        "dataset": str(dataset.root),
        "split": split,
        "fast": fast,
        "n_cases": len(results),
        "mean_dice": _mean_dice(results, names),
        "n_trained_on": len(trained_on) if known else None,
        "n_held_out": len(held_out) if known else None,
        "mean_dice_held_out": _mean_dice(held_out, names) if known else None,
        "mean_dice_trained_on": _mean_dice(trained_on, names) if known else None,
        "held_out_basis": basis,
        "per_label": per_label,
        "seconds": round(time.perf_counter() - started, 2),
        "cases": results,
    }
