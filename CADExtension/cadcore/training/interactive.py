"""``cad train --interactive``: a guided network (DeepEdit-style) trained with simulated clicks.

The network takes the image, two prompt maps (positive and negative clicks, Gaussians of
:data:`PROMPT_RADIUS_MM` drawn in millimetres of the working grid, as :mod:`cadcore.segmentation.prompt_maps` draws
them at inference) and the current segment (empty before the first answer), and answers "the structure under the
positive clicks" (class-agnostic: 0 background, 1 the prompted structure). The current segment is what keeps later
clicks local: without it (DeepEdit's design) the network re-decides the whole structure from the clicks alone at each
prompt, and our 8-epoch trial drifted after the second click. Per patch and step, one labelled structure present in
the patch is the target; its first click is drawn inside it, preferring its interior (probability grows with the
distance to its border); then, as DeepEdit does, 0 to ``corrections`` rounds run the network on the current prompts
without gradients and add a click in its largest error (``+`` in a missed part, ``-`` in a false one), its answer
becoming the next round's current segment. So the network learns to use first and corrective clicks, and each label
of the dataset becomes a prompt target.

Under DDP (torchrun) the rounds run the unwrapped network, so they trigger no collective: each rank draws its own
clicks (its generator is seeded by its rank) and may run a different number of rounds without the others waiting.
Validation is sharded by rank and the sums reduced, as :func:`cadcore.training.segmentation.validate` does, so every
rank gets the same score and picks the same best epoch.

Not used from MONAI's ``apps.deepedit`` transforms: they work on whole volumes with a label dictionary, draw guidance
as channels of fixed voxel size and need the network inside the transform chain; here clicks are drawn on the
augmented patches the trainer already has, in millimetres, with the batched network the loop already holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from cadcore.evaluation.metrics import dice
from cadcore.segmentation.interactive import CONNECTIVITY
from cadcore.segmentation.prompt_maps import draw_clicks
from cadcore.segmentation.sliding_window import predict_probabilities
from cadcore.training.distributed import Ranks, summed, unwrapped
from cadcore.training.losses import IGNORE_LABEL

PROMPT_RADIUS_MM = 3.0
CHANNELS = ("image", "positive", "negative", "previous")


def card_section() -> dict[str, Any]:
    return {"channels": list(CHANNELS), "kind": "gaussian", "radius_mm": PROMPT_RADIUS_MM}


def interior_voxel(region: np.ndarray, spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A voxel of ``region`` drawn with probability growing with its distance to the border (squared)."""
    if not region.any():
        return None
    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1][region]
    weights = distance ** 2
    choice = rng.choice(len(weights), p=weights / weights.sum())
    return np.argwhere(region)[choice]


def gaussian_maps(shape: tuple[int, ...], clicks: list[np.ndarray], spacing: np.ndarray) -> np.ndarray:
    """Simulated clicks (working-grid voxels) drawn exactly as :func:`click_map` draws a card's gaussian channel."""
    return draw_clicks(shape, clicks, spacing, PROMPT_RADIUS_MM)


def largest_error(prediction: np.ndarray, target: np.ndarray) -> tuple[str, np.ndarray] | None:
    """The largest error component and its click's sign: ``+`` for a missed part, ``-`` for a false one."""
    best = None
    for sign, error in (("+", target & ~prediction), ("-", prediction & ~target)):
        components, count = ndimage.label(error, structure=CONNECTIVITY)
        if count:
            sizes = np.bincount(components.ravel())[1:]
            if best is None or sizes.max() > best[2]:
                best = (sign, components == 1 + int(np.argmax(sizes)), int(sizes.max()))
    return None if best is None else (best[0], best[1])


def largest_error_click(prediction: np.ndarray, target: np.ndarray, spacing: np.ndarray,
                        rng: np.random.Generator) -> tuple[str, np.ndarray] | None:
    """Training's corrective click: a random interior voxel of the largest error component."""
    error = largest_error(prediction, target)
    voxel = None if error is None else interior_voxel(error[1], spacing, rng)
    return None if voxel is None else (error[0], voxel)


def prompted_batch(images: torch.Tensor, labels: torch.Tensor, network: torch.nn.Module, spacing: list[float],
                   rng: np.random.Generator, corrections: int,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, I, J, K) images and labels -> (B, 4, I, J, K) inputs (image, prompt maps, current segment) and
    (B, 1, ...) binary targets (:data:`IGNORE_LABEL` kept where the label is unknown)."""
    spacing_array = np.asarray(spacing, dtype=float)
    label_array = labels[:, 0].cpu().numpy()
    targets, clicks = [], []
    for sample in label_array:
        present = [v for v in np.unique(sample).tolist() if v not in (0, IGNORE_LABEL)]
        target = sample == (rng.choice(present) if present else -1)
        first = interior_voxel(target, spacing_array, rng)
        clicks.append({"+": [first] if first is not None else [], "-": []})
        targets.append(target)
    current = np.zeros((len(targets), *label_array.shape[1:]), bool)

    def inputs() -> torch.Tensor:
        maps = [np.stack([gaussian_maps(t.shape, c["+"], spacing_array), gaussian_maps(t.shape, c["-"], spacing_array),
                          segment.astype(np.float32)])
                for t, c, segment in zip(targets, clicks, current)]
        return torch.cat([images, torch.from_numpy(np.stack(maps))], dim=1)

    network = unwrapped(network)  # the rounds trigger no DDP collective: ranks may run different numbers of them
    for _ in range(int(rng.integers(0, corrections + 1))):
        was_training = network.training
        network.eval()
        with torch.no_grad():
            current = network(inputs().to(device)).argmax(1).cpu().numpy() == 1
        network.train(was_training)
        for index, (target, prediction) in enumerate(zip(targets, current)):
            click = largest_error_click(prediction, target, spacing_array, rng)
            if click is not None:
                clicks[index][click[0]].append(click[1])
    binary = np.stack(targets).astype(np.int64)
    binary[label_array == IGNORE_LABEL] = IGNORE_LABEL
    return inputs(), torch.from_numpy(binary[:, None])


def deepest_error_click(prediction: np.ndarray, target: np.ndarray,
                        spacing: np.ndarray) -> tuple[str, np.ndarray] | None:
    """The benchmark's corrective click: the deepest point of the largest error component (deterministic)."""
    error = largest_error(prediction, target)
    return None if error is None else (error[0], deepest_voxel(error[1], spacing))


def deepest_voxel(region: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    distance = ndimage.distance_transform_edt(np.pad(region, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(distance)), region.shape))


def prompt_window(target: np.ndarray, click: np.ndarray, patch: list[int]) -> tuple[slice, ...]:
    """Where validation runs the network: one patch around the first click, grown to hold the whole target, as
    ``cad interact`` runs it on the prompts' region only. Outside it the answer is empty, as in the session, so the
    Dice equals the whole volume's; a whole-head scan then costs a few windows, not the full sliding window."""
    found = np.argwhere(target)
    size, shape = np.asarray(patch), np.asarray(target.shape)
    start = np.maximum(np.minimum(found.min(0), np.asarray(click) - size // 2), 0)
    stop = np.minimum(np.maximum(found.max(0) + 1, start + size), shape)
    start = np.maximum(np.minimum(start, stop - size), 0)  # a full patch where the volume allows it
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def validate_prompted(network: torch.nn.Module, cases: list[Any], labels: list[int], patch: list[int],
                      spacing: list[float], device: torch.device, clicks: int = 3, ranks: Ranks | None = None) -> float:
    """Mean Dice over clicks 1 to ``clicks`` of each labelled structure of each validation case: the first click at
    the structure's deepest point, each next one at the deepest point of the largest error, the answer fed back as
    the current segment (the benchmark's protocol, in working space, on :func:`prompt_window`). Under DDP each rank
    scores its share of the cases (``network`` unwrapped: no collective inside) and the sums are reduced, so all
    ranks return one value."""
    ranks, network = ranks or Ranks(), unwrapped(network)
    spacing_array = np.asarray(spacing, dtype=float)
    scores = []
    for case in cases[ranks.rank::ranks.world]:
        truth = case.label[0]
        whole_image = case.image[0] if case.image.ndim == 4 else case.image
        for value in labels:
            whole_target = truth == value
            if not whole_target.any():
                continue
            first = deepest_voxel(whole_target, spacing_array)
            window = prompt_window(whole_target, first, patch)
            image, target = whole_image[window], whole_target[window]
            given = {"+": [first - [s.start for s in window]], "-": []}
            current = np.zeros(target.shape, bool)
            for _ in range(clicks):
                stacked = np.stack([image, gaussian_maps(target.shape, given["+"], spacing_array),
                                    gaussian_maps(target.shape, given["-"], spacing_array),
                                    current.astype(np.float32)])
                current = predict_probabilities(network, stacked, patch, device, overlap=0.5).argmax(0) == 1
                scores.append(dice(current, target))
                click = deepest_error_click(current, target, spacing_array)
                if click is None:
                    break
                given[click[0]].append(click[1])
    total, count = summed(np.array([float(np.sum(scores)), len(scores)]), ranks)
    return float(total / count) if count else 0.0
