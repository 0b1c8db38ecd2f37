"""What each ``cad`` subcommand does with its parsed arguments (kept apart from argument parsing)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from cadcore.errors import CadError

SEGMENT_DEFAULTS = {"epochs": 100, "batch_size": 2, "learning_rate": 2e-3}
CLASSIFY_DEFAULTS = {"epochs": 60, "batch_size": 32, "learning_rate": 1e-3}


def interrupt_on_signals() -> None:
    """SIGTERM (a cancel from Slicer, a batch scheduler) and SIGINT both become KeyboardInterrupt, so training saves
    its last checkpoint; SIGINT is re-armed because shells start background jobs with it ignored."""

    def raise_interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_train(args: argparse.Namespace) -> int:
    from cadcore.inference import configure_cpu_threads

    configure_cpu_threads()
    interrupt_on_signals()
    values = vars(args)
    defaults = CLASSIFY_DEFAULTS if args.task == "classify" else SEGMENT_DEFAULTS
    values.update({k: v for k, v in defaults.items() if values.get(k) is None})
    from cadcore.cascade_train import check_flags as check_cascade_flags

    check_cascade_flags(values)
    from cadcore.selftrain import check_flags

    check_flags(values)
    if args.task == "classify":
        from cadcore.train_classify import ClassifyConfig, train_classifier

        fields = ClassifyConfig.__dataclass_fields__
        package = train_classifier(ClassifyConfig(**{k: v for k, v in values.items() if k in fields}))
    else:
        from cadcore.train import TrainConfig, train

        fields = TrainConfig.__dataclass_fields__
        config = TrainConfig(**{k: v for k, v in values.items() if k in fields})
        if values.get("cascade"):
            from cadcore.cascade_train import CascadeOptions, train_cascade

            package = train_cascade(config, CascadeOptions.from_values(values))
        elif values.get("unlabelled"):
            from cadcore.selftrain import SelfTrainOptions, self_train

            package = self_train(config, SelfTrainOptions.from_values(values))
        else:
            package = train(config)
        if package is None:  # a non-zero torchrun rank: rank 0 reports
            return 0
    print(f"model package written to {package.folder}")
    return 0


def run_segment(args: argparse.Namespace) -> int:
    from cadcore.segment import segment_command

    return segment_command(args)


def run_evaluate(args: argparse.Namespace) -> int:
    from cadcore.evaluate import evaluate_command

    return evaluate_command(args)


def run_models(args: argparse.Namespace) -> int:
    from cadcore.bundle import list_bundles
    from cadcore.models import find_model_or_bundle, import_package, list_models

    if args.models_command == "list":
        for package in [*list_models(), *list_bundles()]:
            summary = package.summary()
            kind = "  (MONAI bundle)" if summary.get("format") == "bundle" else ""
            print(f"{summary['id']:<28} {summary['version'] or '':<8} {summary['task']:<14} {summary['modality'] or ''}"
                  f"{kind}  {summary['path']}")
        return 0
    if args.models_command == "show":
        print(json.dumps(find_model_or_bundle(args.model).card, indent=2))
        return 0
    if args.models_command == "verify":
        package = find_model_or_bundle(args.model)
        digest = package.verify()
        print(f"{package.id}: weights OK (sha256 {digest})")
        return 0
    if args.models_command == "import":
        package = import_package(args.source, force=args.force)
        print(f"imported {package.id} into {package.folder}")
        return 0
    raise CadError(f"unknown models command {args.models_command}")


def fail(message: str) -> int:
    sys.stderr.write(message + "\n")
    return 2
