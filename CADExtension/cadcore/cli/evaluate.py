"""``cad evaluate``: score a segmentation or classification model and write the report JSON (and ROC PNG)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cadcore.device import configure_cpu_threads
from cadcore.errors import CadError
from cadcore.evaluation.segmentation import evaluate
from cadcore.io.writing import refuse_existing, write_json
from cadcore.registry.packages import find_model


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    refuse_existing(output.exists(), "report exists", output, args.force)
    if not output.parent.exists():
        raise CadError("output folder does not exist", output.parent)
    configure_cpu_threads()
    package = find_model(args.model)
    if package.task == "classification":
        return _evaluate_classifier_command(args, package, output)
    if args.split == "test":
        raise CadError("--split test is for .npz classification data; segmentation uses val or all")
    report = evaluate(args.model, args.data, args.split, args.device, getattr(args, "fast", False))
    write_json(output, report)
    print(f"report: {output}")
    print(f"{report['model']} on {report['n_cases']} {report['split']} cases: mean Dice {report['mean_dice']:.4f}")
    for value, row in report["per_label"].items():
        hd = "n/a" if row["hd95_mean"] is None else f"{row['hd95_mean']:.2f} mm"
        print(f"  {value:>3} {row['name']:<36} Dice {row['dice_mean']:.4f}  HD95 {hd}")
    return 0


def _evaluate_classifier_command(args: argparse.Namespace, package, output: Path) -> int:
    from cadcore.evaluation.classification import evaluate_classifier

    package.verify()
    roc_path = output.with_name(output.name.removesuffix(".json") + "_roc.png")
    report = evaluate_classifier(package, args.data, args.split, args.device, roc_path)
    write_json(output, report)
    print(f"report: {output}")
    sens = report["sensitivity"]
    spec = report["specificity"]
    print(f"{report['model']} on {report['n']} {report['split']} samples: AUC {report['auc']:.4f}"
          f"  ACC {report['acc']:.4f}  sensitivity {sens:.4f}  specificity {spec if spec is None else round(spec, 4)}"
          f"  ECE {report['ece']:.4f}")
    return 0
