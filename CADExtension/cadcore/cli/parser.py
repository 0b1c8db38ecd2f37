"""The ``cad`` command line: every subcommand, flag and default help text, in one parser.

Only the CLI sees ``argparse``: each handler in this package turns the parsed flags into library calls.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from typing import Any

from cadcore import __version__
from cadcore.training.config import CascadeOptions, ClassifyConfig, SelfTrainOptions, TrainConfig


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; make its message one line too."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"cad: error: {message}\n")
        raise SystemExit(2)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _axes(text: str) -> list[int]:
    """``--mirror-axes``: axes to mirror, or ``none`` (data with left/right labels: a flip would swap them)."""
    return [] if text.strip().lower() == "none" else _ints(text)


def _click(text: str) -> tuple[str, list[float]]:
    """``+R,A,S`` (the structure; the sign may be left out) or ``-R,A,S`` (not the structure), RAS mm."""
    sign = "-" if text.startswith("-") else "+"
    values = _floats(text[1:] if text[:1] in "+-" else text)
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"a click is +R,A,S or -R,A,S in mm, got {text!r}")
    return sign, values


def _box(text: str) -> list[float]:
    values = _floats(text)
    if len(values) != 6:
        raise argparse.ArgumentTypeError(f"a box is R0,A0,S0,R1,A1,S1 in mm, got {text!r}")
    return values


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _default(config: type, name: str) -> Any:
    """A training setting's default, from its dataclass (the only place defaults are written)."""
    spec = next(f for f in fields(config) if f.name == name)
    value = spec.default_factory() if spec.default_factory is not MISSING else spec.default
    return ",".join(map(str, value)) if isinstance(value, list) else value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="cad", description="CADExtension engine: segment, classify, train and evaluate models.")
    parser.add_argument("--version", action="version", version=f"cad {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = sub.add_parser("segment", help="segment a volume file or DICOM folder")
    seg.add_argument("input", help="volume (.nii/.nii.gz/.nrrd/.mha/.mhd) or DICOM folder")
    seg.add_argument("-m", "--model", required=True, help="registry id, model package folder or MONAI bundle folder")
    seg.add_argument("-o", "--output", required=True, help="labelmap to write (.nii.gz, .nrrd, .seg.nrrd, .mha)")
    seg.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    seg.add_argument("--overlap", type=float, default=None, help="sliding-window overlap (default: model card)")
    seg.add_argument("--batch-size", type=int, default=None, help="windows per forward pass")
    seg.add_argument("--probabilities", default=None, help="also write per-class probabilities (4D .nii.gz/.nrrd)")
    seg.add_argument("--series", default=None, help="DICOM series UID (default: the series with most slices)")
    seg.add_argument("--png", default=None, help="also write a PNG of the labels over three orthogonal slices")
    seg.add_argument("--no-cascade", action="store_true", help="skip a cascade model's coarse stage")
    seg.add_argument("--fast", action="store_true",
                     help="run at the model card's low fast resolution (CPU-only laptops); labels on the input grid")
    seg.add_argument("--uncertainty", default=None,
                     help="also write the voxel uncertainty (normalised entropy of the mirror-TTA mean softmax, 0..1; "
                          ".nii.gz/.nrrd/.mha); the labels are then the TTA mean's")
    seg.add_argument("--strict", action="store_true",
                     help="refuse (exit 2) an input the model's out-of-distribution guard warns about")
    seg.add_argument("--force", action="store_true", help="overwrite existing outputs")

    ba = sub.add_parser("batch", help="segment a cohort: a folder, CSV or dataset.json, the model loaded once per "
                                      "worker (docs/batch.md)")
    ba.add_argument("inputs", nargs="?", help="folder (image files and DICOM series folders, recursively), CSV "
                                              "(image[,id]) or dataset.json")
    ba.add_argument("-m", "--model", default=None, help="registry id, model package folder or MONAI bundle folder")
    ba.add_argument("-o", "--output", required=True,
                    help="output folder (OUT_DIR/<id>.<format>, sidecars, summary.csv); with --merge: the CSV")
    ba.add_argument("--format", default="nii.gz", choices=["nii.gz", "nrrd", "seg.nrrd", "dcm"],
                    help="output format (dcm: DICOM SEG, for DICOM series inputs)")
    ba.add_argument("--workers", type=int, default=1, help="worker processes, each loading the model once")
    ba.add_argument("--shard", default=None, metavar="K/N", help="run the K-th of N deterministic parts (K from 0)")
    ba.add_argument("--resume", action="store_true", help="skip cases whose outputs and summary row are complete")
    ba.add_argument("--uncertainty", action="store_true", help="also write OUT_DIR/<id>_uncertainty.nii.gz")
    ba.add_argument("--fast", action="store_true", help="run at the model card's fast resolution")
    ba.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    ba.add_argument("--force", action="store_true", help="redo every case, replacing earlier outputs")
    ba.add_argument("--merge", nargs="+", default=None, metavar="OUT_DIR",
                    help="join these batch folders' summary*.csv into -o SUMMARY.csv (no segmentation)")

    seg, cls, cas, st_ = TrainConfig, ClassifyConfig, CascadeOptions, SelfTrainOptions
    tr = sub.add_parser("train", help="train a model and export a package (unset flags take training/config.py's "
                                      "defaults)")
    tr.add_argument("--task", default="segment", choices=["segment", "classify"])
    tr.add_argument("--data", required=True,
                    help="segment: dataset.json or images/+labels/ folder; classify: MedMNIST .npz or CSV")
    tr.add_argument("-o", "--output", required=True, help="model package folder to create")
    tr.add_argument("--id", dest="model_id", default=None, help="model id (default: the output folder's name)")
    tr.add_argument("--epochs", type=int, default=None,
                    help=f"default {_default(seg, 'epochs')} (segment), {_default(cls, 'epochs')} (classify)")
    tr.add_argument("--seed", type=int, default=None, help=f"default {_default(seg, 'seed')}")
    tr.add_argument("--val-fraction", type=float, default=None, help=f"default {_default(seg, 'val_fraction')}")
    tr.add_argument("--val-every", type=int, default=None, help=f"default {_default(seg, 'val_every')}")
    tr.add_argument("--batch-size", type=int, default=None,
                    help=f"default {_default(seg, 'batch_size')} (segment), {_default(cls, 'batch_size')} (classify)")
    tr.add_argument("--patch-size", type=_ints, default=None,
                    help=f"I,J,K voxels (default {_default(seg, 'patch_size')})")
    tr.add_argument("--filters", type=_ints, default=None,
                    help=f"channels per U-Net level (default {_default(seg, 'filters')})")
    tr.add_argument("--lr", dest="learning_rate", type=float, default=None,
                    help=f"default {_default(seg, 'learning_rate')} / {_default(cls, 'learning_rate')}")
    tr.add_argument("--spacing", type=_floats, default=None, help="working spacing in mm (default: as stored)")
    tr.add_argument("--modality", default=None,
                    help=f"MR (percentile clip + z-score), CT (window + scale) or any (CT and MR in one network: "
                         f"percentile clip + z-score per image); default {_default(seg, 'modality')}")
    tr.add_argument("--ct-window", type=_floats, default=None,
                    help=f"with --modality CT: LOW,HIGH Hounsfield units, clipped then scaled to [0, 1] (default "
                         f"{_default(seg, 'ct_window')}; write --ct-window=-250,1250 for a negative LOW)")
    tr.add_argument("--mirror-axes", type=_axes, default=None,
                    help=f"axes safe to mirror, or none (I=0 is left-right: none when labels are lateral, e.g. left "
                         f"and right parotid; default {_default(seg, 'mirror_axes')})")
    tr.add_argument("--max-cases", type=int, default=None, help="use only the first N cases (quick runs)")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--resume", action="store_true", help="continue from OUTPUT/training/last.pt")
    tr.add_argument("--description", default=None)
    tr.add_argument("--init", default=None, help="start from this model package's weights (transfer learning; a "
                    "cascade needs --cascade: each stage starts from its own); the new card keeps the parent's "
                    "label names, colours and terminology where the data names the same structures (or none), and "
                    "its version is the parent's with the minor part incremented")
    tr.add_argument("--allow-overlap", action="store_true", default=None,
                    help="with --init: validate even on cases the parent may have trained on (refused by default: "
                         "cases of the parent's training data that its card does not list as held out)")
    tr.add_argument("--freeze-encoder-epochs", type=int, default=None,
                    help=f"with --init: encoder frozen this long (default {_default(seg, 'freeze_encoder_epochs')})")
    tr.add_argument("--pretrained-lr-factor", type=float, default=None,
                    help=f"with --init: learning-rate factor for pretrained layers (default "
                         f"{_default(seg, 'pretrained_lr_factor')})")
    tr.add_argument("--labels", default=None, help="JSON list of {value, name, color, terminology} for the card")
    tr.add_argument("--force", action="store_true", help="replace an existing package in OUTPUT")
    tr.add_argument("--interactive", action="store_true", default=None,
                    help="train a guided network: the image and click maps in, the prompted structure out (any "
                         "labelled structure is a prompt target; simulated first and corrective clicks)")
    tr.add_argument("--prompt-corrections", type=int, default=None,
                    help=f"with --interactive: simulated corrective clicks per step, at most (default "
                         f"{_default(seg, 'prompt_corrections')})")
    ca = tr.add_argument_group("cascade (--cascade): coarse network finds the target, fine network segments its ROI")
    ca.add_argument("--cascade", action="store_true",
                    help="train a coarse-to-fine cascade; --spacing/--patch-size/--filters describe the fine stage")
    ca.add_argument("--coarse-spacing", type=_floats, default=None,
                    help="coarse stage mm (default: 4x the finest fine axis, never finer than the data)")
    ca.add_argument("--coarse-patch-size", type=_ints, default=None,
                    help="coarse patch I,J,K (default: the median volume at the coarse spacing)")
    ca.add_argument("--coarse-filters", type=_ints, default=None, help="coarse U-Net channels (default: --filters)")
    ca.add_argument("--coarse-epochs", type=int, default=None, help="coarse stage epochs (default: --epochs)")
    ca.add_argument("--roi-margin", type=float, default=None,
                    help=f"mm around the target's box (default {_default(cas, 'roi_margin'):g})")
    ca.add_argument("--roi-jitter", type=float, default=None,
                    help=f"training crops: each side's margin times U(1-j, 1+j) (default "
                         f"{_default(cas, 'roi_jitter')})")
    st = tr.add_argument_group("self-training (--unlabelled): teacher → pseudo-labels → student, K rounds")
    st.add_argument("--unlabelled", default=None,
                    help="folder of unlabelled volumes, or a text file with one volume path per line")
    st.add_argument("--rounds", type=int, default=None,
                    help=f"pseudo-label/student rounds (default {_default(st_, 'rounds')})")
    st.add_argument("--confidence", type=float, default=None,
                    help=f"pseudo-label voxels whose top class probability is lower are ignored (default "
                         f"{_default(st_, 'confidence')})")
    st.add_argument("--student-epochs", type=int, default=None, help="epochs per student (default: --epochs)")
    st.add_argument("--student-init", choices=["scratch", "teacher"], default=None,
                    help="each student starts from scratch (or --init's weights; default) or from the teacher's")
    st.add_argument("--student-augmentation", type=float, default=None, metavar="FACTOR",
                    help=f"the student's rotation and scaling ranges, times the teacher's (default "
                         f"{_default(st_, 'student_augmentation'):g}; 0 to 3)")
    st.add_argument("--no-pseudo-tta", dest="pseudo_tta", action="store_false",
                    help="pseudo-label without averaging over flips along --mirror-axes")
    cl = tr.add_argument_group("classification (--task classify)")
    cl.add_argument("--network", default=None, choices=["resnet18", "densenet121"],
                    help=f"default {_default(cls, 'network')}")
    cl.add_argument("--widths", type=_ints, default=None,
                    help=f"ResNet channels per stage (default {_default(cls, 'widths')})")
    cl.add_argument("--baseline", default=None, choices=["svm", "rf"], help="train the classical baseline instead")
    cl.add_argument("--classes", type=lambda t: t.split(","), default=None, dest="class_names",
                    help="class names, comma-separated, in label order")
    cl.add_argument("--patience", type=int, default=None,
                    help=f"early stopping on validation AUC (default {_default(cls, 'patience')})")
    cl.add_argument("--tta", action="store_true", help="predict with flip test-time augmentation (card setting)")
    cl.add_argument("--roi-size", type=_ints, default=None, help=f"default {_default(cls, 'roi_size')}")
    cl.add_argument("--roi-spacing", type=_floats, default=None, help="mm; default: fit the lesion extent")
    cl.add_argument("--roi-input", default=None, choices=["image", "mask", "masked_image"],
                    help=f"default {_default(cls, 'roi_input')}")

    ev = sub.add_parser("evaluate", help="score a model on a dataset (Dice, HD95)")
    ev.add_argument("-m", "--model", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="val", choices=["val", "test", "all"],
                    help="val: the cases the model card lists as held out; test: a .npz test split")
    ev.add_argument("-o", "--output", required=True, help="report JSON")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--fast", action="store_true", help="segmentation: score the card's fast resolution")
    ev.add_argument("--force", action="store_true")

    it = sub.add_parser("interact", help="segment one structure from clicks, a box or scribbles (any segmentation "
                                         "model, on the prompts' region only)")
    it.add_argument("input", help="volume (.nii/.nii.gz/.nrrd/.mha/.mhd) or DICOM folder")
    it.add_argument("-m", "--model", required=True, help="registry id, model package folder or MONAI bundle")
    it.add_argument("-o", "--output", required=True, help="binary mask to write (0/1 on the input's grid)")
    it.add_argument("--label", type=int, required=True, help="the model's label value to segment")
    it.add_argument("--click", action="append", type=_click, default=[], metavar="+R,A,S",
                    help="a point in RAS mm: +R,A,S is the structure, -R,A,S is not (the first sign is the "
                         "click's kind: write --click=+-12.5,30,4 for a positive click at R = -12.5); repeat for more")
    it.add_argument("--box", type=_box, default=None, metavar="R0,A0,S0,R1,A1,S1",
                    help="two opposite corners in RAS mm: the region to segment")
    it.add_argument("--scribble", default=None, help="labelmap on INPUT's grid: 1 = the structure, 2 = not it")
    it.add_argument("--previous", default=None, help="the current segment to refine (binary, INPUT's grid); kept "
                                                     "unchanged outside the region the network looks at")
    it.add_argument("--uncertainty", default=None,
                    help="also write the voxel entropy of flip test-time augmentation (0..1, INPUT's grid); the "
                         "sidecar's suggested_click is the centre of its most uncertain blob")
    it.add_argument("--series", default=None, help="DICOM series UID")
    it.add_argument("--device", default="auto")
    it.add_argument("--force", action="store_true", help="overwrite existing outputs")

    cf = sub.add_parser("classify", help="classify a lesion, ROI or volume (probabilities + Grad-CAM)")
    cf.add_argument("input", help="volume file or DICOM folder")
    cf.add_argument("-m", "--model", required=True)
    cf.add_argument("-o", "--output", required=True, help="result JSON")
    cf.add_argument("--mask", default=None, help="labelmap/segmentation file on the input's grid")
    cf.add_argument("--label", type=int, default=None,
                    help="lesion label value in --mask: every voxel of that value is the lesion (default: the "
                         "largest 26-connected component of a single label value; the result's roi.label says "
                         "which)")
    cf.add_argument("--center", default=None, help="ROI centre X,Y,Z in RAS mm")
    cf.add_argument("--size", default=None, help="ROI box edge(s) in mm (extent-fitted models)")
    cf.add_argument("--heatmap", default=None, help="write the Grad-CAM heatmap here (input grid)")
    cf.add_argument("--heatmap-class", type=int, default=None, help="class index to explain (default: predicted)")
    cf.add_argument("--series", default=None)
    cf.add_argument("--device", default="auto")
    cf.add_argument("--force", action="store_true")

    sv = sub.add_parser("serve", help="keep the engine warm behind an HTTP API (the Segment Editor's CAD AI effect; "
                                      "loopback only unless --host says otherwise; see docs/server.md)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default loopback; any other sends the token in clear text: use an "
                         "SSH tunnel or a TLS proxy)")
    sv.add_argument("--port", type=int, default=8765, help="port (0: any free port, written to --ready-file)")
    sv.add_argument("--token-file", default=None,
                    help="file whose first line is the token every request must send (Authorization: Bearer); "
                         "default: a fresh token written to $CAD_SERVER_TOKEN_FILE or ~/.cache/cadextension/"
                         "server-token with mode 0600")
    sv.add_argument("--max-sessions", type=int, default=4, help="uploaded volumes held at once (more: HTTP 429)")
    sv.add_argument("--models-memory", type=float, default=4.0, metavar="GB",
                    help="weights kept loaded, in GB (least recently used dropped first)")
    sv.add_argument("--session-ttl", type=float, default=1800.0, metavar="SECONDS",
                    help="a session unused this long expires (its files removed)")
    sv.add_argument("--max-upload-mb", type=float, default=2048.0,
                    help="largest upload, inflated file or request body (more: HTTP 413)")
    sv.add_argument("--job-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="longest wait for the engine (one job at a time; longer: HTTP 503)")
    sv.add_argument("--ready-file", default=None,
                    help='once listening, write {"url", "pid", "version"} here (atomically)')
    sv.add_argument("--device", default="auto")

    mo = sub.add_parser("models", help="list, show, verify or import model packages")
    mo_sub = mo.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    mo_sub.add_parser("list", help="every registered model")
    show = mo_sub.add_parser("show", help="a model card")
    show.add_argument("model")
    verify = mo_sub.add_parser("verify", help="check weights against the card's sha256")
    verify.add_argument("model")
    imp = mo_sub.add_parser("import", help="copy a package or MONAI bundle into the user model folder")
    imp.add_argument("source")
    imp.add_argument("--force", action="store_true")
    return parser
