"""``cad train``: flags become a typed config, the config picks the trainer; a signal (SIGTERM/SIGINT, armed for
every command in :func:`cadcore.cli.main`) becomes a saved checkpoint in the trainers."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from cadcore.device import configure_cpu_threads
    from cadcore.io.writing import check_output_folder

    check_output_folder(args.output)  # a file in the way or a read-only place: refused before loading any data
    configure_cpu_threads()  # SIGTERM/SIGINT are armed for every command by cadcore.cli.main
    values = {key: value for key, value in vars(args).items() if value is not None}  # unset: the config's default
    from cadcore.training.cascade import check_flags as check_cascade_flags

    check_cascade_flags(values)
    from cadcore.training.self_training import check_flags

    check_flags(values)
    if values.get("interactive") and (values.get("cascade") or values.get("unlabelled") or args.task == "classify"):
        from cadcore.errors import CadError

        raise CadError("--interactive trains a single-stage segmentation network (not with --cascade, --unlabelled "
                       "or --task classify)")
    if values.get("prompt_corrections") is not None and not values.get("interactive"):
        from cadcore.errors import CadError

        raise CadError("--prompt-corrections only applies to --interactive")
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
