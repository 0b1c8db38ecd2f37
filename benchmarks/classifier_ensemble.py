"""Assemble an ensemble classification package from models trained with ``cad train --task classify``.

The members' weights go into one safetensors file under the prefixes ``m0.``, ``m1.``, …; the card gets
``ensemble.members``, flip test-time augmentation (``inference.tta``), a temperature fitted on the validation split
for the averaged prediction, and the validation metrics of exactly what ``cad classify`` / ``cad evaluate`` compute.
Members must share the network spec, classes, ROI and split (same data file, different seeds).

    .venv/bin/python benchmarks/classifier_ensemble.py --members runs/adrenal-resnet runs/adrenal-resnet-s1 \\
        --data ../shared/data/medmnist3d/adrenalmnist3d.npz --id adrenal-resnet -o OUT [--no-tta] [--float16]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np

from cadcore.classification.ensemble import (
    averaged_probabilities,
    fit_averaged_temperature,
    load_members,
    member_logits,
)
from cadcore.device import pick_device
from cadcore.evaluation.classification import evaluation_set
from cadcore.evaluation.metrics import classification_metrics
from cadcore.registry.packages import find_model, save_package


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", nargs="+", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--float16", action="store_true",
                        help="store the weights as float16 (half the size; metrics are computed with them)")
    parser.add_argument("--prior-correction", action="store_true",
                        help="correct class-balanced training back to the training class frequencies")
    args = parser.parse_args()
    packages = [find_model(member) for member in args.members]
    first = packages[0].card.raw
    for package in packages[1:]:
        for key in ("network", "classes", "roi"):
            if package.card.raw[key] != first[key]:
                raise SystemExit(f"{package.folder}: {key} differs from {packages[0].folder}")
    device = pick_device("cpu")
    tta = not args.no_tta
    val = evaluation_set(packages[0], args.data, "val")
    members = [network for package in packages for network in load_members(package, device)]
    if args.float16:  # round every weight through float16 first, so the metrics are those of the stored package
        for network in members:
            for tensor in network.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().float())
    stack = member_logits(members, val.inputs, device, tta)
    prior = None
    if args.prior_correction:  # members trained with class-balanced sampling: correct back to the real frequencies
        counts = np.bincount(evaluation_set(packages[0], args.data, "train").labels, minlength=stack.shape[-1])
        prior = [round(float(c), 6) for c in counts / counts.sum()]
    temperature = fit_averaged_temperature(stack, val.labels, prior)
    single = [classification_metrics(averaged_probabilities(member_logits([m], val.inputs, device, False)), val.labels)
              for m in members]
    before = classification_metrics(averaged_probabilities(stack, 1.0, prior), val.labels)
    after = classification_metrics(averaged_probabilities(stack, temperature, prior), val.labels)
    state = {f"m{i}.{k}": (v.half() if args.float16 and v.is_floating_point() else v)
             for i, package in enumerate(packages) for k, v in package.load_state_dict().items()}
    card = copy.deepcopy(first)
    card.update(id=args.id, ensemble={"members": [f"m{i}" for i in range(len(packages))],
                                      "sources": [p.card.raw["id"] for p in packages],
                                      "seeds": [p.card.raw["training"]["seed"] for p in packages]})
    if tta:
        card["inference"] = {"tta": "flips"}
    card["calibration"] = {"method": "temperature scaling of the averaged prediction on validation data",
                           "temperature": round(temperature, 5), "ece_before": before["ece"],
                           "ece_after": after["ece"], **({"prior": prior, "prior_from": "training class frequencies"}
                                                         if prior else {})}
    card["metrics"] = {"validation": after, "members_plain_validation": single,
                       "command": "benchmarks/classifier_ensemble.py " + " ".join(p.card.raw["id"] for p in packages)}
    card["training"]["members"] = [{"id": p.card.raw["id"], "best_epoch": p.card.raw["metrics"].get("best_epoch"),
                                    "seconds": p.card.raw["training"].get("seconds")} for p in packages]
    package = save_package(args.output, card, state)
    keys = ("auc", "acc", "sensitivity", "specificity", "balanced_accuracy", "ece")
    print(json.dumps({"package": str(package.folder), "temperature": temperature,
                      "members_plain_auc": [m["auc"] for m in single], **{k: after[k] for k in keys}}, indent=2))


if __name__ == "__main__":
    main()
