"""``cad train``: signals become a saved checkpoint, flags become a typed config, the config picks the trainer."""

from __future__ import annotations

import argparse
import signal
import threading


def interrupt_on_signals() -> None:
    """SIGTERM (a cancel from Slicer, a batch scheduler) and SIGINT both become KeyboardInterrupt, so training saves
    its last checkpoint; SIGINT is re-armed because shells start background jobs with it ignored."""

    def raise_interrupt(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run(args: argparse.Namespace) -> int:
    from cadcore.device import configure_cpu_threads

    configure_cpu_threads()
    interrupt_on_signals()
    values = {key: value for key, value in vars(args).items() if value is not None}  # unset: the config's default
    from cadcore.training.cascade import check_flags as check_cascade_flags

    check_cascade_flags(values)
    from cadcore.training.self_training import check_flags

    check_flags(values)
    if args.task == "classify":
        from cadcore.training.classification import train_classifier
        from cadcore.training.config import ClassifyConfig

        fields = ClassifyConfig.__dataclass_fields__
        package = train_classifier(ClassifyConfig(**{k: v for k, v in values.items() if k in fields}))
    else:
        from cadcore.training.config import TrainConfig
        from cadcore.training.segmentation import train

        fields = TrainConfig.__dataclass_fields__
        config = TrainConfig(**{k: v for k, v in values.items() if k in fields})
        if values.get("cascade"):
            from cadcore.training.cascade import train_cascade
            from cadcore.training.config import CascadeOptions

            package = train_cascade(config, CascadeOptions.from_values(values))
        elif values.get("unlabelled"):
            from cadcore.training.config import SelfTrainOptions
            from cadcore.training.self_training import self_train

            package = self_train(config, SelfTrainOptions.from_values(values))
        else:
            package = train(config)
        if package is None:  # a non-zero torchrun rank: rank 0 reports
            return 0
    print(f"model package written to {package.folder}")
    return 0
