"""``cad train --task classify``: a 3D ResNet-18 / DenseNet-121 lesion classifier, or the classical baseline.

Class-balanced sampling, augmentation (rotation, scaling, translation, mirroring, intensity), cross-entropy, AdamW
with cosine decay, early stopping on validation AUC, then temperature scaling on the validation logits (ECE before and
after in the card). ``--baseline svm|rf`` instead trains hand-crafted features + scikit-learn on the same splits.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cadcore.classification.calibration import softmax
from cadcore.classification.datasets import (
    ClassificationSet,
    extent_margin,
    load_csv,
    load_npz_split,
    split_indices,
    subset,
    through_roi,
)
from cadcore.classification.ensemble import averaged_probabilities, fit_averaged_temperature, member_logits
from cadcore.device import pick_device
from cadcore.errors import CadError
from cadcore.evaluation.metrics import classification_metrics
from cadcore.io.writing import refuse_existing
from cadcore.registry.card_reader import trained_model_id
from cadcore.registry.locations import CARD_NAME
from cadcore.registry.networks import build_network
from cadcore.registry.packages import ModelPackage, save_package
from cadcore.training.config import ClassifyConfig


def network_spec(config: ClassifyConfig, n_classes: int) -> dict[str, Any]:
    if config.network == "resnet18":
        return {"name": "ResNet", "params": {
            "block": "basic", "layers": [2, 2, 2, 2], "block_inplanes": config.widths, "spatial_dims": 3,
            "n_input_channels": 1, "conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": False,
            "num_classes": n_classes}}
    if config.network == "densenet121":
        return {"name": "DenseNet121", "params": {"spatial_dims": 3, "in_channels": 1, "out_channels": n_classes}}
    raise CadError(f"unknown classification network {config.network!r} (resnet18 or densenet121)")


def check_input_fits(network: torch.nn.Module, shape: tuple[int, ...], device: torch.device, name: str) -> None:
    """Fail before training when the ROI is too small for the network's downsampling (DenseNet-121 needs ≥ 64³)."""
    try:
        with torch.no_grad():
            network.eval()(torch.zeros((2, *shape), device=device))
    except RuntimeError as exc:
        raise CadError(f"ROI size {list(shape[1:])} is too small for {name} ({str(exc).splitlines()[0]}); "
                       "use a larger --roi-size or another network") from exc


def load_data(config: ClassifyConfig, roi_spec: dict[str, Any], normalization: dict[str, Any]):
    path = Path(config.data)
    if not path.exists():
        raise CadError("dataset not found", path)
    if path.suffix == ".npz":
        train, val = load_npz_split(path, "train"), load_npz_split(path, "val")
        roi_spec.update(fit="extent", margin=extent_margin(train.masks), input="mask", spacing=None,
                        size=list(train.images.shape[1:]))
        train, val = through_roi(train, roi_spec), through_roi(val, roi_spec)
        return train, val, {"source": path.name, "split": "npz train/val arrays"}
    if path.suffix.lower() == ".csv":
        data = load_csv(path, roi_spec, normalization)
        train_index, val_index = split_indices(len(data.labels), config.seed, config.val_fraction, data.labels)
        split = {"seed": config.seed, "val_fraction": config.val_fraction, "val": [data.ids[i] for i in val_index]}
        return subset(data, train_index), subset(data, val_index), {"source": path.name, "split": split}
    raise CadError("classification data must be a MedMNIST-style .npz or a CSV of image,label[,mask,mask_value]", path)


def augmentation(roi_input: str):
    from monai import transforms as T

    angle = np.deg2rad(15)
    steps = [T.RandAffine(prob=0.7, rotate_range=(angle,) * 3, scale_range=(0.1,) * 3, translate_range=(2, 2, 2),
                          padding_mode="zeros", mode="nearest" if roi_input == "mask" else "bilinear")]
    steps += [T.RandFlip(prob=0.5, spatial_axis=axis) for axis in range(3)]
    if roi_input != "mask":
        steps += [T.RandScaleIntensity(factors=0.1, prob=0.5), T.RandShiftIntensity(offsets=0.1, prob=0.5)]
    return T.Compose([*steps, T.EnsureType(track_meta=False)])


class Augmented(torch.utils.data.Dataset):
    def __init__(self, data: ClassificationSet, transform) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data.labels)

    def __getitem__(self, index: int):
        return torch.as_tensor(self.transform(self.data.inputs[index])).float(), int(self.data.labels[index])


@torch.inference_mode()
def predict_logits(network: torch.nn.Module, inputs: np.ndarray, device: torch.device, batch: int = 64) -> np.ndarray:
    network.eval()
    outputs = [network(torch.from_numpy(inputs[i:i + batch]).to(device)).float().cpu().numpy()
               for i in range(0, len(inputs), batch)]
    return np.concatenate(outputs)


def train_classifier(config: ClassifyConfig) -> ModelPackage:
    output = Path(config.output)
    refuse_existing((output / CARD_NAME).exists(), "a model package already exists here", output, config.force,
                    verb="replace it")
    trained_model_id(config.model_id, output)  # a name the registry refuses fails now, not after training
    roi_spec: dict[str, Any] = {"size": config.roi_size, "spacing": config.roi_spacing,
                                "fit": "fixed" if config.roi_spacing else "extent", "margin": 0.1,
                                "input": config.roi_input, "orientation": "RAS"}
    normalization = {"kind": "mr", "percentiles": [0.5, 99.5]} if config.roi_input != "mask" else {"kind": "none"}
    train, val, provenance = load_data(config, roi_spec, normalization)
    n_classes = int(max(train.labels.max(), val.labels.max())) + 1
    names = config.class_names or [f"class {i}" for i in range(n_classes)]
    if len(names) != n_classes:
        raise CadError(f"--classes names {len(names)} classes but the data has {n_classes}")
    started = time.time()
    if config.baseline:
        return _train_baseline(config, train, val, roi_spec, names, provenance, started)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    device = pick_device(config.device)
    spec = network_spec(config, n_classes)
    network = build_network(spec, for_training=True).to(device)
    check_input_fits(network, train.inputs.shape[1:], device, spec["name"])
    counts = np.bincount(train.labels, minlength=n_classes).astype(float)
    weights = torch.as_tensor(1.0 / counts[train.labels], dtype=torch.double)
    loader = torch.utils.data.DataLoader(
        Augmented(train, augmentation(roi_spec["input"])), batch_size=config.batch_size,
        sampler=torch.utils.data.WeightedRandomSampler(weights, len(weights), generator=torch.Generator().manual_seed(
            config.seed)))
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * min(1.0, e / max(1, config.epochs)))))
    loss_fn = torch.nn.CrossEntropyLoss()
    best = {"auc": -1.0, "epoch": 0}
    best_state: dict[str, torch.Tensor] = {}
    history = []
    progress = tqdm(range(config.epochs), desc="training", unit="epoch")
    try:
        for epoch in progress:
            network.train()
            losses = []
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(network(x.to(device)), y.to(device))
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            scheduler.step()
            metrics = classification_metrics(softmax(predict_logits(network, val.inputs, device)), val.labels)
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auc": metrics["auc"],
                            "val_acc": metrics["acc"]})
            if metrics["auc"] > best["auc"]:
                best = {"auc": metrics["auc"], "epoch": epoch + 1}
                best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
            progress.set_postfix(loss=f"{history[-1]['loss']:.3f}", val_auc=f"{metrics['auc']:.3f}",
                                 best=f"{best['auc']:.3f}")
            if epoch + 1 - best["epoch"] >= config.patience:
                tqdm.write(f"early stop at epoch {epoch + 1}: no AUC gain since epoch {best['epoch']}")
                break
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: keep the best model so far
        tqdm.write(f"interrupted after {len(history)} epochs: exporting the best so far (epoch {best['epoch']})")
    if not best_state:
        raise CadError("training stopped before the first validation; nothing to export")
    network.load_state_dict(best_state)
    stack = member_logits([network], val.inputs, device, config.tta)
    temperature = fit_averaged_temperature(stack, val.labels)
    before = classification_metrics(averaged_probabilities(stack), val.labels)
    after = classification_metrics(averaged_probabilities(stack, temperature), val.labels)
    card = _card(config, spec, roi_spec, normalization, names, provenance, train, val, started)
    if config.tta:
        card["inference"] = {"tta": "flips"}
    card["calibration"] = {"method": "temperature scaling on validation logits", "temperature": round(temperature, 5),
                           "ece_before": before["ece"], "ece_after": after["ece"]}
    card["gradcam"] = {"target_layer": "layer4" if spec["name"] == "ResNet" else "class_layers.relu"}
    card["metrics"] = {"validation": after, "best_epoch": best["epoch"]}
    card["training"]["history"] = history
    package = save_package(output, card, best_state)
    (output / "training_summary.json").write_text(json.dumps({"history": history, "best": best}, indent=2) + "\n")
    return package


def _card(config, spec, roi_spec, normalization, names, provenance, train, val, started) -> dict[str, Any]:
    return {
        "format_version": 1,
        "id": trained_model_id(config.model_id, config.output),
        "version": config.version,
        "task": "classification",
        "description": config.description or f"{spec['name']} classifier trained with cad train --task classify",
        "network": spec,
        "classes": [{"value": i, "name": name} for i, name in enumerate(names)],
        "roi": roi_spec,
        "preprocessing": {"normalization": normalization},
        "training": {"data": provenance["source"], "split": provenance["split"], "n_train": int(len(train.labels)),
                     "n_val": int(len(val.labels)), "seed": config.seed, "seconds": round(time.time() - started),
                     "config": {k: v for k, v in asdict(config).items() if k not in ("data", "output")}},
    }


def _train_baseline(config, train, val, roi_spec, names, provenance, started) -> ModelPackage:
    from cadcore.classification.baseline import train_baseline
    from cadcore.classification.radiomics import FEATURE_NAMES, feature_matrix

    features_train = feature_matrix(zip(train.images, train.masks, [train.spacing] * len(train.labels)))
    features_val = feature_matrix(zip(val.images, val.masks, [val.spacing] * len(val.labels)))
    classifier = train_baseline(features_train, train.labels, config.baseline, list(FEATURE_NAMES), config.seed)
    probabilities = classifier.predict_proba(features_val)
    spec = classifier.card_section()
    card = _card(config, spec, roi_spec, {"kind": "none"}, names, provenance, train, val, started)
    card["metrics"] = {"validation": classification_metrics(probabilities, val.labels)}
    return save_package(Path(config.output), card, classifier.state_tensors())
