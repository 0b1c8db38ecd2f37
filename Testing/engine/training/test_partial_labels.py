"""Partly labelled data (dataset.json ``labels_present``): the marginal loss, present-only validation, the
dataset checks, and a real ``cad train`` on SimpleITK files in which one case lacks an organ.

The loss property the training relies on: for a case whose label k was not contoured, moving probability between
background and k where the stored truth is background leaves the loss unchanged (the network is penalised neither
for predicting k there nor for not predicting it), while errors on the present labels, and on k in a case that has
it, still cost.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from organ_cases import write_organ_case

from cadcore.cli import main
from cadcore.registry.packages import find_model
from cadcore.training.losses import MaskedDiceCELoss
from cadcore.training.patches import PreparedCase
from cadcore.training.segmentation import validate

TINY = ["--epochs", "2", "--filters", "4,8,16", "--patch-size", "16,16,16", "--spacing", "2,2,2", "--batch-size", "2",
        "--val-every", "1", "--device", "cpu", "--modality", "CT", "--mirror-axes", "none"]


def logits_and_truth(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 6, 6, 6, generator=generator)
    truth = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=generator)
    return logits, truth


def swap_background_and(logits: torch.Tensor, truth: torch.Tensor, case: int, value: int) -> torch.Tensor:
    """The case's background and class-``value`` logits exchanged where its truth is background: probability moves
    between the two, every other class keeps its probability."""
    swapped = logits.clone()
    where = truth[case, 0] == 0
    swapped[case, 0][where], swapped[case, value][where] = logits[case, value][where], logits[case, 0][where]
    return swapped


def test_all_present_equals_monai_dice_ce() -> None:
    from monai.losses import DiceCELoss

    logits, truth = logits_and_truth()
    reference = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)(logits, truth)
    assert torch.allclose(MaskedDiceCELoss()(logits, truth, torch.ones(2, 3)), reference, atol=1e-6)
    assert torch.allclose(MaskedDiceCELoss()(logits, truth), reference, atol=1e-6)


def test_absent_label_is_not_penalised_either_way_where_truth_is_background() -> None:
    logits, truth = logits_and_truth(1)
    truth[0][truth[0] == 2] = 0  # case 0 has no contour of label 2: its esophagus voxels are stored as background
    present = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss = MaskedDiceCELoss()(logits, truth, present)
    predicts_two = swap_background_and(logits, truth, 0, 2)  # case 0 now predicts label 2 where it predicted 0
    assert (predicts_two[0].argmax(0) != logits[0].argmax(0)).any()
    assert torch.allclose(MaskedDiceCELoss()(predicts_two, truth, present), loss, atol=1e-6)
    strongly = logits.clone()  # and predicting it with certainty, taken from background's share only
    where = truth[0, 0] == 0
    total = torch.logsumexp(torch.stack([logits[0, 0], logits[0, 2]]), 0)
    strongly[0, 2][where], strongly[0, 0][where] = total[where], -1e4
    assert torch.allclose(MaskedDiceCELoss()(strongly, truth, present), loss, atol=1e-5)
    # not vacuous: the same change costs when label 2 is (wrongly) treated as present background
    assert not torch.allclose(MaskedDiceCELoss()(predicts_two, truth), MaskedDiceCELoss()(logits, truth), atol=1e-4)


def test_errors_on_present_labels_still_cost() -> None:
    logits, truth = logits_and_truth(2)
    truth[0][truth[0] == 2] = 0
    present = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    perfect = torch.nn.functional.one_hot(truth[:, 0], 3).movedim(-1, 1).float() * 8.0
    base = MaskedDiceCELoss()(perfect, truth, present)
    missed_one = perfect.clone()  # case 0 misses label 1 (present): predicts background there
    missed_one[0, 0][truth[0, 0] == 1], missed_one[0, 1][truth[0, 0] == 1] = 8.0, 0.0
    assert MaskedDiceCELoss()(missed_one, truth, present) > base + 0.1
    # label 2 where case 1, which has it, is background: a false positive on a present label
    assert MaskedDiceCELoss()(swap_background_and(perfect, truth, 1, 2), truth, present) > base + 0.1


def test_gradients_are_finite_and_background_and_the_absent_label_move_together() -> None:
    logits, truth = logits_and_truth(3)
    truth[0][truth[0] == 2] = 0
    logits.requires_grad_(True)
    MaskedDiceCELoss()(logits, truth, torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])).backward()
    assert torch.isfinite(logits.grad).all()
    background = truth[0, 0] == 0  # at case 0's background voxels, bg and absent label 2 get the same gradient
    assert torch.allclose(logits.grad[0, 0][background] * torch.softmax(logits, 1)[0, 2][background],
                          logits.grad[0, 2][background] * torch.softmax(logits, 1)[0, 0][background], atol=1e-7)


class Constant(torch.nn.Module):
    """A "network" that predicts background everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[0], 3, *x.shape[2:])
        out[:, 0] = 5.0
        return out


def test_validation_dice_skips_cases_without_the_label() -> None:
    image = np.zeros((1, 16, 16, 16), np.float32)
    without, with_two = np.zeros((1, 16, 16, 16), np.uint8), np.zeros((1, 16, 16, 16), np.uint8)
    with_two[0, 4:8, 4:8, 4:8] = 2
    cases = [PreparedCase("a", image, without, labels_present=(1,)), PreparedCase("b", image, with_two)]
    scores = validate(Constant(), cases, [1, 2], [16, 16, 16], torch.device("cpu"))
    assert scores[2] == 0.0  # case b only; case a's "empty = perfect" Dice of 1 would have made it 0.5
    assert scores[1] == 1.0  # both cases have label 1 and neither draws it


# --- dataset.json checks and a real run ------------------------------------------------------------------------

def write_case(root: Path, name: str, seed: int, values: tuple[int, ...]) -> dict:
    """A CT-like block with organ cubes; only the given label values are in the image and drawn."""
    return write_organ_case(root, name, seed, organs=values, drawn=values)


@pytest.fixture
def partial_data(tmp_path: Path) -> Path:
    """Four training cases (two without label 2, listed as such) and one fully labelled validation case."""
    root = tmp_path / "partial"
    training = [{**write_case(root, f"c{i}", i, (1, 2) if i % 2 else (1,)), **({} if i % 2 else
                                                                              {"labels_present": [1]})}
                for i in range(4)]
    spec = {"name": "partial cubes", "labels": {"0": "background", "1": "organ one", "2": "organ two"},
            "modality": {"0": "CT"}, "training": training,
            "validation": [{**write_case(root, "v0", 9, (1, 2)), "labels_present": [1, 2]}]}
    (root / "dataset.json").write_text(json.dumps(spec))
    return root


def rewrite(root: Path, change) -> Path:
    spec = json.loads((root / "dataset.json").read_text())
    change(spec)
    (root / "dataset.json").write_text(json.dumps(spec))
    return root / "dataset.json"


@pytest.mark.parametrize("present, named", [
    ([1, 7], "'labels_present' lists [7], not in 'labels' [1, 2]"),
    ("1,2", "'labels_present' must be a list of label values"),
    ([1, True], "'labels_present' must be a list of label values"),
    ([1, 1], "lists a value twice"),
])
def test_bad_labels_present_is_refused_in_one_line(partial_data: Path, tmp_path: Path, capfd, present,
                                                   named: str) -> None:
    spec = rewrite(partial_data, lambda s: s["training"][1].update(labels_present=present))
    output = tmp_path / "model"
    assert main(["train", "--data", str(spec), "-o", str(output), *TINY]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cad train: error: {spec}: dataset.json 'training' entry 1")
    assert named in err[0] and not output.exists()


def test_labels_present_needs_label_names(partial_data: Path, tmp_path: Path, capfd) -> None:
    spec = rewrite(partial_data, lambda s: s.pop("labels"))
    assert main(["train", "--data", str(spec), "-o", str(tmp_path / "m"), *TINY]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the dataset.json 'labels'" in err[0]


def test_an_organ_drawn_but_listed_absent_is_refused(partial_data: Path, tmp_path: Path, capfd) -> None:
    spec = rewrite(partial_data, lambda s: s["training"][1].update(labels_present=[1]))  # c1 draws label 2
    output = tmp_path / "model"
    assert main(["train", "--data", str(spec), "-o", str(output), *TINY]) == 2
    err = capfd.readouterr().err  # found while the voxels are read: after the (self-erasing) loading bar
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "c1.nii.gz: label values [2] are drawn but the dataset entry's labels_present [1]" in err.splitlines()[-1]
    assert not (output / "model.json").exists()


def test_cad_train_on_partly_labelled_cases(partial_data: Path, tmp_path: Path, monkeypatch) -> None:
    """The marginal loss runs (it is the loss used: a spy sees each batch's present masks), the card counts the
    cases each label was contoured in, and the log's per-label validation Dice exists for both labels."""
    import cadcore.training.losses as losses

    seen: list[torch.Tensor] = []
    original = losses.MaskedDiceCELoss.forward

    def spy(self, logits, target, present=None):
        seen.append(present.detach().cpu().clone())
        return original(self, logits, target, present)

    monkeypatch.setattr(losses.MaskedDiceCELoss, "forward", spy)
    output = tmp_path / "partial-model"
    assert main(["train", "--data", str(partial_data), "-o", str(output), "--seed", "1", *TINY]) == 0
    card = find_model(output).card.raw
    assert card["training"]["labels_present_cases"] == {"1": {"train": 4, "val": 1}, "2": {"train": 2, "val": 1}}
    masks = torch.cat(seen)
    assert masks.shape[1] == 3 and (masks[:, :2] == 1).all() and set(masks[:, 2].tolist()) <= {0.0, 1.0}
    assert (masks[:, 2] == 0).any()  # a case without label 2 was drawn into a batch with its mask
    rows = list(csv.DictReader(open(output / "training_log.csv")))
    assert {"dice_1", "dice_2", "dice_mean"} <= set(rows[-1])
