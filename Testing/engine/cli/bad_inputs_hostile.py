"""Corpus entries (part 3): lying headers, untrustworthy geometry, hostile model packages, and honest defaults.

Registered into :data:`bad_inputs.CORPUS` on import (the corpus test imports every part).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from bad_inputs import Models, Refusal, blob, case, edited_copy, good, segment, write
from bad_inputs_commands import cases_folder, classify, train

# --- header lies and geometry that cannot be trusted (read before allocating) ---------------------------------------


def nifti(d: Path, name: str = "scan.nii") -> Path:
    """An uncompressed single-file NIfTI-1 of the blob, so its header bytes can be edited in place."""
    return write(blob(), d / name)


def patch_bytes(path: Path, offset: int, fmt: str, value: float | int) -> Path:
    import struct

    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


def metaimage(d: Path, name: str, **fields: str) -> Path:
    """A MetaImage (.mha) header with chosen fields and 64 bytes of data: what a hand-made or broken file looks like."""
    header = {"ObjectType": "Image", "NDims": "3", "BinaryData": "True", "BinaryDataByteOrderMSB": "False",
              "DimSize": "4 4 4", "ElementSpacing": "1 1 1", "Offset": "0 0 0",
              "TransformMatrix": "1 0 0 0 1 0 0 0 1", "ElementType": "MET_UCHAR", **fields}
    text = "".join(f"{key} = {value}\n" for key, value in header.items()) + "ElementDataFile = LOCAL\n"
    path = d / name
    path.write_bytes(text.encode() + bytes(range(64)))
    return path


@case("segment: NIfTI vox_offset 0 (header bytes read as voxels)")
def _vox_offset(d: Path, m: Models) -> Refusal:
    source = patch_bytes(nifti(d), 108, "<f", 0.0)
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "vox_offset")


@case("segment: NIfTI with zero voxel spacing")
def _zero_spacing(d: Path, m: Models) -> Refusal:
    source = patch_bytes(nifti(d), 80, "<f", 0.0)
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "spacing")


@case("segment: NIfTI with NaN voxel spacing")
def _nan_spacing(d: Path, m: Models) -> Refusal:
    source = patch_bytes(nifti(d), 84, "<f", float("nan"))
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "spacing")


@case("segment: MetaImage with a NaN origin")
def _nan_origin(d: Path, m: Models) -> Refusal:
    source = metaimage(d, "nan_origin.mha", Offset="nan 0 0")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "origin")


@case("segment: MetaImage whose direction is not orthonormal")
def _skewed(d: Path, m: Models) -> Refusal:
    source = metaimage(d, "skewed.mha", TransformMatrix="1 0 0 0.5 1 0 0 0 1")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "orthonormal")


@case("segment: complex-valued voxels")
def _complex(d: Path, m: Models) -> Refusal:
    real = sitk.GetArrayFromImage(blob())
    source = write(sitk.RealAndImaginaryToComplex(sitk.GetImageFromArray(real), sitk.GetImageFromArray(real)),
                   d / "complex.mha")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "complex")


@case("segment: a 4 KiB file whose header claims 1024^3 float32 voxels")
def _huge_claim(d: Path, m: Models) -> Refusal:
    source = metaimage(d, "huge.mha", DimSize="1024 1024 1024", ElementType="MET_FLOAT")
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "bytes")


@case("segment: uncompressed .nii cut short")
def _short_nii(d: Path, m: Models) -> Refusal:
    source = nifti(d)
    source.write_bytes(source.read_bytes()[:600])
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "bytes")


@case("segment: .mhd whose data file is missing")
def _mhd_no_data(d: Path, m: Models) -> Refusal:
    source = write(blob(), d / "split.mhd")
    for data in d.glob("split.*raw*"):
        data.unlink()
    return Refusal(segment(source, m.segmentation, d / "out.nii.gz"), source, "")


# --- hostile model packages ----------------------------------------------------------------------------------------


@case("models import: an absolute id")
def _absolute_id(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card.update(id=str(d / "victim")))
    return Refusal(["models", "import", str(copy)], copy / "model.json", "'id'")


@case("models import: an id that climbs out of the registry")
def _climbing_id(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card.update(id="../escaped"))
    return Refusal(["models", "import", str(copy)], copy / "model.json", "'id'")


@case("models import: a package holding a symlink")
def _symlink(d: Path, m: Models) -> Refusal:
    copy = d / "linked"
    shutil.copytree(m.segmentation, copy)
    secret = d / "secret.txt"
    secret.write_text("not for the registry")
    (copy / "notes.md").symlink_to(secret)
    return Refusal(["models", "import", str(copy)], copy / "notes.md", "link")


@case("models import: a shipped model's id without --force")
def _shadowing(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card.update(id="hippocampus-unet"))
    return Refusal(["models", "import", str(copy)], "hippocampus-unet", "shipped")


@case("segment: pickled weights whose sha256 the card matches")
def _pickle(d: Path, m: Models) -> Refusal:
    import hashlib

    import torch

    copy = d / "pickled"
    shutil.copytree(m.segmentation, copy)
    weights = copy / "model.safetensors"
    torch.save({"x": torch.zeros(2)}, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    card = json.loads((copy / "model.json").read_text())
    card["weights"]["sha256"] = digest
    (copy / "model.json").write_text(json.dumps(card))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), weights, "safetensors")


@case("segment: weights that do not fit the card's network")
def _misfit(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card["network"]["params"].update(filters=[8, 16, 32]))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.safetensors", "")


@case("segment: a card claiming a 20000-channel layer")
def _huge_network(d: Path, m: Models) -> Refusal:
    copy = edited_copy(m.segmentation, d, lambda card: card["network"]["params"].update(filters=[20000, 8, 16]))
    return Refusal(segment(good(d), copy, d / "out.nii.gz"), copy / "model.safetensors", "")


# --- training and classification defaults ----------------------------------------------------------------------------


@case("train: an output folder whose name is no model id")
def _train_bad_id(d: Path, m: Models) -> Refusal:
    return Refusal(train(cases_folder(d), d / "my model"), d / "my model", "--id")


@case("classify: a mask with no lesion")
def _empty_mask(d: Path, m: Models) -> Refusal:
    mask = write(sitk.GetImageFromArray(np.zeros((12, 14, 16), np.uint8)), d / "empty_mask.nii.gz")
    return Refusal(classify(good(d), m.classification, d / "r.json", "--mask", str(mask)), mask, "")


@case("train: a dataset of one case (nothing to validate on)")
def _train_one_case(d: Path, m: Models) -> Refusal:
    data = cases_folder(d, n=1)
    return Refusal(train(data, d / "model"), data, "two labelled cases")
