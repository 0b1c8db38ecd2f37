"""``cad evaluate``: score a segmentation or classification model and write the report JSON (and ROC PNG).

Every output is checked (name, folder, --force) before the model is run; outputs are published without replacing
anything unless ``--force``, and a report is never left without its ROC plot nor the reverse.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cadcore.device import configure_cpu_threads
from cadcore.errors import CadError
from cadcore.evaluation.segmentation import evaluate
from cadcore.io.readback import check_png_file
from cadcore.io.writing import all_or_none, atomic_path, check_output_file, check_output_path, write_json
from cadcore.registry.packages import find_model


def run(args: argparse.Namespace) -> int:
    output = check_output_file(args.output, args.force, "report exists")
    package = find_model(args.model)
    configure_cpu_threads()
    if package.task == "classification":
        roc_path = check_output_path(output.with_name(output.name.removesuffix(".json") + "_roc.png"), args.force,
                                     (".png",))
        if roc_path.resolve() == output.resolve():
            raise CadError("is given as both the report and its ROC plot", output)
        return _evaluate_classifier_command(args, package, output, roc_path)
    if args.split == "test":
        raise CadError("--split test is for .npz classification data; segmentation uses val or all")
    report = evaluate(args.model, args.data, args.split, args.device, getattr(args, "fast", False))
    with all_or_none(replace=args.force):
        write_json(output, report)
    print(f"report: {output}")
    mean = "n/a" if report["mean_dice"] is None else f"{report['mean_dice']:.4f}"
    print(f"{report['model']} on {report['n_cases']} {report['split']} cases: mean Dice {mean}")
    partial = any("n_cases" in row for row in report["per_label"].values())  # labels_present in the data
    for value, row in report["per_label"].items():
        hd = "n/a" if row["hd95_mean"] is None else f"{row['hd95_mean']:.2f} mm"
        dice = "n/a" if row["dice_mean"] is None else f"{row['dice_mean']:.4f}"
        count = row.get("n_cases", report["n_cases"])
        scored = f"  (scored on {count} case{'' if count == 1 else 's'})" if partial else ""  # labels_present
        print(f"  {value:>3} {row['name']:<36} Dice {dice}  HD95 {hd}{scored}")
    return 0


def _evaluate_classifier_command(args: argparse.Namespace, package, output: Path, roc_path: Path) -> int:
    from cadcore.evaluation.classification import evaluate_classifier

    package.verify()
    with all_or_none(replace=args.force):  # the report and its ROC plot: both or neither
        with atomic_path(roc_path, check_png_file) as roc_tmp:  # the plot is drawn under a hidden name
            report = evaluate_classifier(package, args.data, args.split, args.device, roc_tmp)
            report["roc_png"] = str(roc_path)
        write_json(output, report)
    print(f"report: {output}")
    sens = report["sensitivity"]
    spec = report["specificity"]
    print(f"{report['model']} on {report['n']} {report['split']} samples: AUC {report['auc']:.4f}"
          f"  ACC {report['acc']:.4f}  sensitivity {sens:.4f}  specificity {spec if spec is None else round(spec, 4)}"
          f"  ECE {report['ece']:.4f}")
    return 0
