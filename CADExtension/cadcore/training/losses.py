"""Dice + cross-entropy that skips "ignore" voxels, for labels that are only partly known (pseudo-labels).

Self-training (``cad train --unlabelled``) marks the voxels where the teacher was not confident with
:data:`IGNORE_LABEL`. Those voxels must contribute nothing: neither to the cross-entropy (``ignore_index``) nor to
Dice, whose sums run over the kept voxels only. MONAI's ``MaskedDiceLoss`` is not used because it masks the logits
*before* the softmax, so a masked voxel still adds a uniform 1/C to every class's denominator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_LABEL = 255  # a uint8 label value no model uses: "unknown here, do not learn from this voxel"


class MaskedDiceCELoss(torch.nn.Module):
    """Dice (over batch and space, per class, background included) + mean cross-entropy over non-ignored voxels.

    With no ignored voxel it equals ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` (the loss
    ordinary training uses), so labelled and pseudo-labelled cases are weighted the same way.
    """

    def __init__(self, ignore_index: int = IGNORE_LABEL, smooth: float = 1e-5) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, C, *spatial); ``target`` (B, 1, *spatial) integer labels, possibly ``ignore_index``."""
        labels = target[:, 0].long()
        valid = labels != self.ignore_index
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        weight = valid.to(logits.dtype)
        n_valid = weight.sum()
        per_voxel = F.cross_entropy(logits, safe, reduction="none")
        ce = (per_voxel * weight).sum() / n_valid.clamp(min=1.0)
        probabilities = torch.softmax(logits, dim=1) * weight[:, None]
        onehot = F.one_hot(safe, logits.shape[1]).movedim(-1, 1).to(logits.dtype) * weight[:, None]
        dims = [0, *range(2, logits.ndim)]
        intersection = (probabilities * onehot).sum(dims)
        denominator = probabilities.sum(dims) + onehot.sum(dims)
        dice = 1.0 - (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        return dice.mean() + ce
