"""``cad train``: supervised 3D U-Net training that ends in a model package.

Deterministic split from the seed, patches with augmentation, Dice + cross-entropy, AdamW with warm-up and cosine
decay, validation Dice per label every N epochs, best checkpoint kept, ``--resume``, a CSV log, a PNG of the curves.
Ctrl-C saves the last checkpoint and still exports the best model so far.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cadcore.device import pick_device
from cadcore.errors import CadError
from cadcore.evaluation.metrics import dice
from cadcore.io.datasets import Case, Dataset, load_dataset, split_cases
from cadcore.io.writing import refuse_existing
from cadcore.registry.card_reader import trained_model_id
from cadcore.registry.locations import CARD_NAME
from cadcore.registry.networks import build_network, divisor_of, dynunet_spec, strides_for
from cadcore.registry.packages import ModelPackage, find_model, save_package
from cadcore.segmentation.ood_guard import measure_training_domain
from cadcore.segmentation.sliding_window import predict_probabilities
from cadcore.training.config import TrainConfig
from cadcore.training.distributed import Ranks, finish, gathered, start, summed, weights_digest, wrap
from cadcore.training.interactive import CHANNELS as INTERACTIVE_CHANNELS
from cadcore.training.interactive import card_section as interactive_card_section
from cadcore.training.interactive import prompted_batch, validate_prompted
from cadcore.training.losses import MaskedDiceCELoss
from cadcore.training.patches import PatchDataset, PreparedCase, augmentation, case_sampler, prepare_cases
from cadcore.training.report import plot_curves, total_training_seconds, write_log
from cadcore.training.transfer import child_version, parent_label_entries, parent_label_values

DEFAULT_COLORS = [[0.85, 0.35, 0.25], [0.25, 0.6, 0.85], [0.35, 0.75, 0.35], [0.9, 0.8, 0.2], [0.7, 0.4, 0.8]]


def preprocessing_for(config: TrainConfig) -> dict[str, Any]:
    normalization = (
        {"kind": "ct", "window": config.ct_window} if config.modality.upper() == "CT"
        else {"kind": "mr", "percentiles": [0.5, 99.5]}
    )
    return {"orientation": config.orientation, "spacing": config.spacing, "normalization": normalization}


def network_for(config: TrainConfig, n_classes: int) -> dict[str, Any]:
    """The DynUNet of a training: one input channel, or the image and two click maps for a guided network
    (``--interactive``, which answers 0 or 1: "the prompted structure")."""
    channels, n_classes = (len(INTERACTIVE_CHANNELS), 2) if config.interactive else (1, n_classes)
    spec = dynunet_spec(channels, n_classes, config.filters, strides_for(config.spacing, len(config.filters)))
    check_patch(config.patch_size, spec)
    return spec


def check_patch(patch_size: list[int], spec: dict[str, Any], whose: str = "") -> None:
    """Refuse, before any training, a patch the network's downsampling cannot halve cleanly."""
    if any(size % div for size, div in zip(patch_size, divisor_of(spec))):
        raise CadError(f"patch size {patch_size} must be divisible by {divisor_of(spec)}{whose}")


def oriented_header(path, orientation: str | None, extent: bool = False) -> np.ndarray:
    """A volume's voxel spacing (or, with ``extent``, its physical extent) in mm along the working axes, read from
    the header only: a 2-voxel probe with that spacing and the file's direction is oriented like the data."""
    import SimpleITK as sitk

    from cadcore.preprocessing.working_space import orient

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    spacing = [float(s) * (n if extent else 1) for n, s in zip(reader.GetSize(), reader.GetSpacing())]
    probe = sitk.Image([2, 2, 2], sitk.sitkUInt8)
    probe.SetSpacing(spacing)
    probe.SetDirection(reader.GetDirection())
    return np.array(orient(probe, orientation).GetSpacing())


def median_spacing(cases, orientation: str | None) -> list[float]:
    """The training images' median voxel spacing in the working orientation (headers only), so the card always
    names the resolution the network learnt and inference resamples other inputs to it."""
    spacings = [oriented_header(case.image, orientation) for case in cases]
    return [round(float(v), 4) for v in np.median(np.array(spacings), axis=0)]


def lr_factor(epoch: float, config: TrainConfig) -> float:
    if epoch < config.warmup_epochs:
        return (epoch + 1) / (config.warmup_epochs + 1)
    progress = (epoch - config.warmup_epochs) / max(1, config.epochs - config.warmup_epochs)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def validate(network: torch.nn.Module, cases: list[PreparedCase], labels: list[int], patch: list[int],
             device: torch.device, ranks: Ranks | None = None) -> dict[int, float]:
    """Mean Dice per label over the validation cases where the label is present (working space, no
    post-processing; NaN for a label no validation case has); under DDP each rank scores its share of the cases and
    the sums are reduced."""
    ranks = ranks or Ranks()
    sums, counts = np.zeros(len(labels)), np.zeros(len(labels))
    for case in cases[ranks.rank::ranks.world]:
        prediction = predict_probabilities(network, case.image, patch, device, overlap=0.5).argmax(0)
        truth = case.label[0]
        for index, value in enumerate(labels):
            if case.labels_present is None or value in case.labels_present:  # absent: unknown, not background
                sums[index] += dice(prediction == value, truth == value)
                counts[index] += 1
    totals = summed(np.concatenate([sums, counts]), ranks)
    sums, counts = totals[: len(labels)], totals[len(labels):]
    return {value: float(sums[i] / counts[i]) if counts[i] else float("nan") for i, value in enumerate(labels)}


def mean_dice(scores: dict[int, float]) -> float:
    """The mean over the labels validation could score (a label no validation case has is left out)."""
    known = [v for v in scores.values() if not math.isnan(v)]
    return float(np.mean(known)) if known else float("nan")


def split_for(config: TrainConfig, dataset: Dataset) -> tuple[list[Case], list[Case]]:
    """(training, validation) cases: the dataset's own ``validation`` list when it has one, else a seeded split."""
    cases = sorted(dataset.cases, key=lambda c: c.id)[: config.max_cases] if config.max_cases else dataset.cases
    if dataset.validation:  # the dataset names its split (by patient, or labelled vs pseudo-labelled)
        return cases, dataset.validation
    return split_cases(cases, config.seed, config.val_fraction)


def train(config: TrainConfig) -> ModelPackage:
    """Train and export a package into ``config.output``; returns it."""
    output = Path(config.output)
    refuse_existing((output / CARD_NAME).exists(), "a model package already exists here", output, config.force,
                    config.resume, "replace it")
    trained_model_id(config.model_id, output)  # a name the registry refuses fails now, not after training
    dataset = load_dataset(config.data)
    train_cases, val_cases = split_for(config, dataset)
    if not val_cases or not train_cases:  # one case: nothing to validate on, and a "best" model chosen on nothing
        raise CadError(f"training needs at least two labelled cases (one held out for validation), got "
                       f"{len(train_cases) + len(val_cases)}", config.data)
    parent = find_model(config.init) if config.init else None
    label_values = sorted(dataset.label_names) or (parent_label_values(parent.card) if parent else []) or [1]
    label_metadata(config, dataset, label_values, parent)  # a bad --labels file fails before training, not after
    held_out_check = None
    if parent is not None:  # before anything is read or written: validating on the parent's training cases
        from cadcore.training.transfer import check_parent_overlap

        held_out_check = check_parent_overlap(parent, dataset, train_cases, val_cases,
                                              config.allow_overlap, config.data)
    if parent is not None and config.interactive and parent.card.cascade is not None and config.init_stage is None:
        config.init_stage = "fine"  # a prompt replaces the coarse stage: a cascade becomes interactive by its fine one
    if not config.spacing:
        config.spacing = median_spacing(train_cases, config.orientation)
    preprocessing = preprocessing_for(config)
    if parent is not None:
        from cadcore.training.transfer import parent_spec

        parent, spec = parent_spec(parent, "DynUNet", 2 if config.interactive else len(label_values) + 1,
                                   config.spacing, config.init_stage)
        if config.interactive:  # the first convolution gains the click maps and starts fresh (shapes differ)
            spec["params"]["in_channels"] = len(INTERACTIVE_CHANNELS)
        check_patch(config.patch_size, spec, " (the --init network)")
    else:
        spec = network_for(config, len(label_values) + 1)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    ranks, device = start(pick_device(config.device))

    allowed = set(label_values)
    bar = config.progress_prefix
    train_prepared = prepare_cases(train_cases, preprocessing, allowed, f"{bar}loading training cases")
    val_prepared = prepare_cases(val_cases, preprocessing, allowed, f"{bar}loading validation cases")

    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    set_determinism(config.seed)
    network = build_network(spec, for_training=True).to(device)
    init_report = None
    parameters: Any = network.parameters()
    if parent is not None:
        from cadcore.training.transfer import load_pretrained, parameter_groups

        init_report = load_pretrained(network, parent, config.init_stage)
        parameters = parameter_groups(network, init_report, config.learning_rate, config.pretrained_lr_factor)
        if ranks.main:
            output.mkdir(parents=True, exist_ok=True)
            (output / "init_report.json").write_text(json.dumps(init_report, indent=2) + "\n")
        fresh = init_report["reinitialised"]
        tqdm.write(f"--init {parent.id}: {init_report['loaded']} tensors loaded, {len(fresh)} re-initialised "
                   f"({', '.join(fresh[:4])})")
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, config))
    partial = any(case.pseudo for case in train_cases)  # pseudo-labels: skip their ignored voxels
    # partly labelled cases (dataset.json labels_present): their absent labels merge into background in the loss;
    # an interactive network's target is "the prompted structure" (always a present one), so it needs no mask
    absent = not config.interactive and any(case.labels_present is not None for case in train_cases)
    loss_fn = MaskedDiceCELoss() if partial or absent else DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    crop_key = "foreground" if partial else "label"
    patches = PatchDataset(train_prepared, augmentation(config.patch_size, config.mirror_axes,
                                                          config.augmentation_strength, crop_key=crop_key),
                           foreground=partial, label_values=label_values if absent else None)
    shard = case_sampler(patches, ranks, config.seed)  # per-case weights (dataset.json), else plain shuffling
    loader = torch.utils.data.DataLoader(
        patches, batch_size=config.batch_size, shuffle=shard is None, sampler=shard,
        drop_last=len(train_prepared) > config.batch_size * ranks.world,
        generator=torch.Generator().manual_seed(config.seed + ranks.rank),
    )
    model = wrap(network, ranks, device)

    ckpt_dir = output / "training"
    if ranks.main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {"epoch": 0, "best_mean_dice": -1.0, "best_epoch": -1, "history": []}
    best_weights: dict[str, torch.Tensor] | None = None
    if config.resume and (ckpt_dir / "last.pt").exists():
        checkpoint = torch.load(ckpt_dir / "last.pt", map_location="cpu", weights_only=True)
        network.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = json.loads(checkpoint["state_json"])
        if (ckpt_dir / "best.pt").exists():
            best_weights = torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=True)

    def save_last() -> None:
        if not ranks.main:
            return
        torch.save({"model": network.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state_json": json.dumps(state)}, ckpt_dir / ".last.pt")
        (ckpt_dir / ".last.pt").replace(ckpt_dir / "last.pt")

    prompt_rng = np.random.default_rng(config.seed + ranks.rank)  # the simulated clicks (--interactive)
    started = time.time()
    progress = tqdm(range(state["epoch"], config.epochs), desc=f"{bar}training", unit="epoch",
                    initial=state["epoch"], total=config.epochs)
    try:
        for epoch in progress:
            if parent is not None and config.freeze_encoder_epochs:
                from cadcore.training.transfer import set_encoder_frozen

                set_encoder_frozen(network, epoch < config.freeze_encoder_epochs)
            network.train()
            if shard is not None:
                shard.set_epoch(epoch)
            losses = []
            for batch in loader:
                optimizer.zero_grad(set_to_none=True)
                inputs, targets = batch["image"], batch["label"]
                if config.interactive:
                    # the unwrapped network: its rounds run no DDP collective, however many each rank draws
                    inputs, targets = prompted_batch(inputs, targets, network, config.spacing, prompt_rng,
                                                     config.prompt_corrections, device)
                extra = (batch["present"].to(device),) if absent else ()
                loss = loss_fn(model(inputs.to(device)), targets.to(device), *extra)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            scheduler.step()
            loss_sum = summed(np.array([float(np.sum(losses)), len(losses)]), ranks)
            row: dict[str, Any] = {"epoch": epoch + 1, "loss": float(loss_sum[0] / max(1.0, loss_sum[1])),
                                   "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 1)}
            if (epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs:
                dice = ({1: validate_prompted(network, val_prepared, label_values, config.patch_size, config.spacing,
                                              device, ranks=ranks)} if config.interactive else
                        validate(network, val_prepared, label_values, config.patch_size, device, ranks))
                row.update({f"dice_{v}": d for v, d in dice.items()})
                row["dice_mean"] = mean_dice(dice)
                if row["dice_mean"] > state["best_mean_dice"]:
                    state["best_mean_dice"], state["best_epoch"] = row["dice_mean"], epoch + 1
                    best_weights = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
                    if ranks.main:
                        torch.save(best_weights, ckpt_dir / "best.pt")
            state["history"].append(row)
            state["epoch"] = epoch + 1
            latest = next((r["dice_mean"] for r in reversed(state["history"]) if "dice_mean" in r), float("nan"))
            progress.set_postfix(loss=f"{row['loss']:.3f}", val_dice=f"{latest:.3f}",
                                 best=f"{state['best_mean_dice']:.3f}")
            save_last()
            if ranks.main:
                write_log(output, state["history"])
    except KeyboardInterrupt:
        save_last()
        tqdm.write(f"interrupted at epoch {state['epoch']}: last checkpoint saved in {ckpt_dir}")
    rank_digests = gathered(weights_digest(network), ranks)  # DDP: every rank must hold the same weights
    rank_best = gathered(  # and must have chosen the same best epoch and kept the same best weights
        [state["best_epoch"], weights_digest(best_weights) if best_weights is not None else None], ranks)
    finish(ranks)
    if not ranks.main:
        return None  # type: ignore[return-value]
    if best_weights is not None:
        network.load_state_dict(best_weights)  # export through the network: its aliased weights are stored once
    best_weights = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    card = build_card(config, dataset, spec, preprocessing, label_values, train_cases, val_cases, state,
                      time.time() - started, parent)
    if held_out_check is not None:
        card["training"]["parent_held_out"] = held_out_check
    if init_report is not None:
        card["training"]["parent"] = {k: init_report[k] for k in ("parent", "parent_version", "parent_sha256",
                                                                  "parent_stage") if k in init_report}
        card["training"]["init"] = {"loaded_tensors": init_report["loaded"],
                                    "reinitialised": init_report["reinitialised"],
                                    "freeze_encoder_epochs": config.freeze_encoder_epochs,
                                    "pretrained_lr_factor": config.pretrained_lr_factor}
    card["training_domain"] = measure_training_domain(  # what the OOD guard of cad segment compares inputs with
        [c.image for c in train_cases], preprocessing, card["modality"], "measured by cad train on its training cases")
    package = save_package(output, card, best_weights)
    plot_curves(output, state["history"], label_values)
    summary = {**state, "config": asdict(config), "world_size": ranks.world, "rank_weight_sha256": rank_digests,
               "rank_best": [{"best_epoch": epoch, "sha256": digest} for epoch, digest in rank_best]}
    (output / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return package


def label_metadata(config: TrainConfig, dataset, label_values: list[int],
                   parent: ModelPackage | None = None) -> list[dict[str, Any]]:
    """Names, colours and terminology for the card: from ``--labels FILE`` when given; else, with ``--init``, the
    parent's entry for each value the dataset leaves unnamed or names as the same structure
    (:func:`cadcore.training.transfer.parent_label_entries`); else the dataset's names and default colours."""
    if config.labels:
        try:
            given = {int(item["value"]): item for item in json.loads(Path(config.labels).read_text())}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CadError(f"cannot read label descriptions ({exc})", config.labels) from exc
        missing = [v for v in label_values if v not in given]
        if missing:
            raise CadError(f"label descriptions lack values {missing}", config.labels)
        return [given[v] for v in label_values]
    names = dataset.label_names
    kept = parent_label_entries(parent.card, label_values, names) if parent is not None else {}
    return [kept.get(v) or {"value": v, "name": names.get(v, f"label {v}"),
                            "color": DEFAULT_COLORS[i % len(DEFAULT_COLORS)]} for i, v in enumerate(label_values)]


def card_version(config: TrainConfig, parent: ModelPackage | None) -> str:
    """The version the caller gave; or, with ``--init`` and the default left, the parent's with the minor part
    incremented (a fine-tuned model is a new version of the parent's)."""
    default = next(f.default for f in fields(TrainConfig) if f.name == "version")
    if parent is None or config.version != default:
        return config.version
    return child_version(parent.version or "") or config.version


INTERACTIVE_LABELS = [{"value": 1, "name": "prompted structure", "color": [0.95, 0.6, 0.1]}]


def build_card(config: TrainConfig, dataset, spec, preprocessing, label_values, train_cases, val_cases, state,
               seconds: float, parent: ModelPackage | None = None) -> dict[str, Any]:
    return {
        "format_version": 1,
        "id": trained_model_id(config.model_id, config.output),
        "version": card_version(config, parent),
        "task": "segmentation",
        "description": config.description or f"3D U-Net trained with cad train on {dataset.name or dataset.root.name}",
        "modality": config.modality.upper(),
        "network": spec,
        "labels": INTERACTIVE_LABELS if config.interactive else label_metadata(config, dataset, label_values, parent),
        "preprocessing": preprocessing,
        "inference": {"patch_size": config.patch_size, "overlap": 0.5, "mode": "gaussian", "sw_batch_size": 2},
        "postprocessing": {"largest_component": True, "fill_holes": True, "min_size_voxels": 10},
        "training": {
            "data": dataset.name or str(dataset.root),
            "licence": dataset.licence,
            "n_train": len(train_cases),
            "n_val": len(val_cases),
            "seed": config.seed,
            "split": {"val_fraction": config.val_fraction, "val": [c.id for c in val_cases]},
            "epochs": state["epoch"],
            "best_epoch": state["best_epoch"],
            "seconds": round(seconds),
            "seconds_all_runs": round(total_training_seconds(state["history"])),
            "config": {k: v for k, v in asdict(config).items() if k not in ("data", "output")},
            **partial_label_counts(label_values, train_cases, val_cases),
        },
        "metrics": {"validation_dice_working_space": round(state["best_mean_dice"], 4)},
        **({"interactive": interactive_card_section()} if config.interactive else {}),
    }


def partial_label_counts(label_values: list[int], train_cases: list[Case], val_cases: list[Case]) -> dict[str, Any]:
    """For a partly labelled data set: on how many training and validation cases each label was contoured (the
    card's reader learns that, e.g., the esophagus was learnt from a third of the cases); nothing otherwise."""
    if all(case.labels_present is None for case in train_cases + val_cases):
        return {}
    return {"labels_present_cases": {str(v): {"train": sum(c.has_label(v) for c in train_cases),
                                             "val": sum(c.has_label(v) for c in val_cases)} for v in label_values}}
