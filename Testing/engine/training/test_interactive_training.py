"""``cad train --interactive``: simulated clicks land where they should (first inside the target, corrections on the
largest error with the right sign), a tiny guided training ends in a package ``cad interact`` runs, ``--init`` from an
automatic model keeps every layer but the first, and the flags that do not fit are refused."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cadcore.cli import main
from cadcore.evaluation.metrics import dice
from cadcore.training.interactive import largest_error_click, prompted_batch, validate_prompted

SAMPLES = Path(__file__).resolve().parents[3] / "sample_data" / "hippocampus"
TINY = ["--epochs", "2", "--val-every", "1", "--patch-size", "16,16,16", "--filters", "4,8,16", "--device", "cpu"]


class Constant(torch.nn.Module):
    """A stand-in network that always answers "background": every correction must then be a positive click."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((x.shape[0], 2, *x.shape[2:]))
        out[:, 0] = 1.0
        return out


def test_first_click_inside_the_target_and_corrections_on_the_missed_part():
    labels = torch.zeros((2, 1, 12, 12, 12), dtype=torch.long)
    labels[0, 0, 2:7, 2:7, 2:7] = 1
    labels[1, 0, 5:10, 4:9, 3:8] = 2
    images = torch.rand((2, 1, 12, 12, 12))
    inputs, targets = prompted_batch(images, labels, Constant(), [1.0, 1.0, 1.0], np.random.default_rng(0), 0,
                                     torch.device("cpu"))
    assert inputs.shape == (2, 4, 12, 12, 12) and torch.equal(inputs[:, 0:1], images)
    assert torch.equal(targets[:, 0].bool(), labels[:, 0] > 0)
    for sample in range(2):
        peak = np.unravel_index(int(inputs[sample, 1].argmax()), (12, 12, 12))
        assert targets[sample, 0][peak] == 1  # the positive click's map peaks inside the target
        assert float(inputs[sample, 2].max()) == 0.0  # no negative click without a correction round
        assert float(inputs[sample, 3].max()) == 0.0  # and no current segment before the network's first answer
    target = np.zeros((12, 12, 12), bool)
    target[2:7, 2:7, 2:7] = True
    sign, voxel = largest_error_click(np.zeros_like(target), target, np.ones(3), np.random.default_rng(1))
    assert sign == "+" and target[tuple(voxel)]
    sign, voxel = largest_error_click(target | (np.indices(target.shape)[0] > 9), target, np.ones(3),
                                      np.random.default_rng(1))
    assert sign == "-" and not target[tuple(voxel)]


class HalfBlock(torch.nn.Module):
    """Answers "the structure" in the lower half of the patch: its first answer is the current segment of the
    next round."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((x.shape[0], 2, *x.shape[2:]))
        out[:, 0] = 1.0
        out[:, 1, :6] = 2.0
        return out


def test_correction_rounds_feed_the_network_answer_back_as_the_current_segment():
    labels = torch.zeros((1, 1, 12, 12, 12), dtype=torch.long)
    labels[0, 0, 2:9, 2:9, 2:9] = 1
    inputs, _ = prompted_batch(torch.rand((1, 1, 12, 12, 12)), labels, HalfBlock(), [1.0, 1.0, 1.0],
                               np.random.default_rng(3), 20, torch.device("cpu"))
    # at least one round ran for this seed: the current segment is the network's answer, clicks follow its errors
    assert torch.equal(inputs[0, 3] > 0, torch.arange(12)[:, None, None].expand(12, 12, 12) < 6)
    assert float(inputs[0, 2].max()) > 0.5  # its false part (rows 0-1, 9-... of the lower half) drew a "-" click


def test_validation_follows_the_benchmark_protocol():
    case = SimpleNamespace(image=np.random.rand(1, 12, 12, 12).astype(np.float32),
                           label=np.zeros((1, 12, 12, 12), np.int64))
    case.label[0, 2:9, 2:9, 2:9] = 1
    score = validate_prompted(HalfBlock(), [case], [1], [12, 12, 12], [1.0, 1.0, 1.0], torch.device("cpu"))
    truth = case.label[0] == 1
    half = np.zeros_like(truth)
    half[:6] = True
    assert score == pytest.approx(dice(half, truth))  # the same answer at each of the 3 clicks


def test_a_guided_training_ends_in_a_package_cad_interact_runs(tmp_path, capsys):
    output = tmp_path / "guided"
    assert main(["train", "--data", str(SAMPLES), "-o", str(output), "--interactive", *TINY]) == 0
    card = json.loads((output / "model.json").read_text())
    assert card["interactive"]["channels"] == ["image", "positive", "negative", "previous"]
    assert card["network"]["params"]["in_channels"] == 4 and card["network"]["params"]["out_channels"] == 2
    assert card["labels"][0]["value"] == 1 and card["training"]["config"]["interactive"] is True
    mask = tmp_path / "mask.nii.gz"
    assert main(["interact", str(SAMPLES / "imagesTr" / "hippocampus_015.nii.gz"), "-m", str(output), "-o",
                 str(mask), "--label", "1", "--click=+18,36,12", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert mask.exists()
    refused = tmp_path / "automatic.nii.gz"  # without a click a guided network has nothing to segment
    capsys.readouterr()
    assert main(["segment", str(SAMPLES / "imagesTr" / "hippocampus_015.nii.gz"), "-m", str(output), "-o",
                 str(refused), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "guided (interactive) model" in err and "cad interact" in err
    assert not refused.exists() and not Path(f"{refused}.json").exists()


def test_init_from_an_automatic_model_keeps_all_but_the_first_layer(tmp_path):
    parent = tmp_path / "parent"
    assert main(["train", "--data", str(SAMPLES), "-o", str(parent), *TINY]) == 0
    child = tmp_path / "child"
    assert main(["train", "--data", str(SAMPLES), "-o", str(child), "--interactive", "--init", str(parent),
                 "--allow-overlap", *TINY]) == 0
    report = json.loads((child / "init_report.json").read_text())
    assert report["loaded"] > 0 and all(name.startswith(("input_block", "output_block", "deep_supervision"))
                                        or "conv1" in name for name in report["reinitialised"])


@pytest.mark.parametrize(("extra", "words"), [
    (["--cascade"], "--interactive"),
    (["--prompt-corrections", "3"], "--prompt-corrections"),
    (["--interactive", "--prompt-corrections", "-1"], "--prompt-corrections"),
])
def test_flags_that_do_not_fit_are_refused(tmp_path, capfd, extra, words):
    argv = ["train", "--data", str(SAMPLES), "-o", str(tmp_path / "m"), *TINY, *extra]
    if extra == ["--cascade"]:
        argv.append("--interactive")
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not (tmp_path / "m").exists()


class ShapeRecorder(HalfBlock):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape[2:]))
        return super().forward(x)


def test_validation_runs_the_network_only_around_the_prompt():
    """A small target in a large (whole-head-like) case: the network sees one patch-sized window holding the target
    and the first click, never the whole volume (the cost that made whole-head validation take minutes)."""
    case = SimpleNamespace(image=np.random.rand(1, 64, 64, 12).astype(np.float32),
                           label=np.zeros((1, 64, 64, 12), np.int64))
    case.label[0, 40:46, 10:15, 4:8] = 1
    network = ShapeRecorder()
    validate_prompted(network, [case], [1], [16, 16, 8], [1.0, 1.0, 1.0], torch.device("cpu"))
    assert network.shapes and all(shape == (16, 16, 8) for shape in network.shapes)
    assert len(network.shapes) <= 3  # one window per click (the whole volume would take dozens)
