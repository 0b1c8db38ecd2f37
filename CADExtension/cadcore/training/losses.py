"""Dice + cross-entropy for labels that are only partly known: ignored voxels (pseudo-labels) and absent labels
(partly labelled data sets).

Self-training (``cad train --unlabelled``) marks the voxels where the teacher was not confident with
:data:`IGNORE_LABEL`. Those voxels must contribute nothing: neither to the cross-entropy (``ignore_index``) nor to
Dice, whose sums run over the kept voxels only. MONAI's ``MaskedDiceLoss`` is not used because it masks the logits
*before* the softmax, so a masked voxel still adds a uniform 1/C to every class's denominator.

A partly labelled case (dataset.json ``labels_present``, e.g. an OpenKBP patient whose esophagus was not contoured)
is handled by the *marginal* loss (Shi et al., "Marginal loss and exclusion loss for partially supervised
multi-organ segmentation", Medical Image Analysis 70, 2021; also Fang & Yan, IEEE TMI 39(11), 2020): for that case
the probabilities of its absent classes are added to background's before cross-entropy and Dice, and the absent
classes' own Dice terms are dropped. Why this and not masking the voxels: an unlabelled esophagus voxel is stored as
background, so it is known only to be "background or one of the absent organs". The merged class says exactly that:
the network is neither penalised for predicting an absent organ there nor for not predicting it (moving
probability between background and an absent organ leaves the merged probability unchanged), yet every voxel still
teaches the present organs and the background/absent-organ boundary. Masking whole background voxels out instead
would throw away nearly all background supervision of every partly labelled case (and of 169 of OpenKBP's 203).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_LABEL = 255  # a uint8 label value no model uses: "unknown here, do not learn from this voxel"


class MaskedDiceCELoss(torch.nn.Module):
    """Dice (over batch and space, per class, background included) + mean cross-entropy over non-ignored voxels,
    with each case's absent classes merged into background (``present``).

    With no ignored voxel and every class present it equals
    ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, batch=True)`` (the loss ordinary training uses), so
    labelled, partly labelled and pseudo-labelled cases are weighted the same way.
    """

    def __init__(self, ignore_index: int = IGNORE_LABEL, smooth: float = 1e-5) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """``logits`` (B, C, *spatial); ``target`` (B, 1, *spatial) integer labels, possibly ``ignore_index``;
        ``present`` (B, C): 1 where the case's class was contoured, 0 where it is absent (column 0, background,
        is always 1); ``None``: every class present."""
        n_classes = logits.shape[1]
        labels = target[:, 0].long()
        valid = labels != self.ignore_index
        safe = torch.where(valid, labels, torch.zeros_like(labels))
        weight = valid.to(logits.dtype)
        spatial = (1,) * (logits.ndim - 2)
        if present is None:
            present = torch.ones(logits.shape[:2], dtype=logits.dtype, device=logits.device)
        present = present.to(device=logits.device, dtype=logits.dtype).clone()
        present[:, 0] = 1.0
        kept = present.view(*present.shape, *spatial) > 0  # (B, C, 1, ...): background and the present classes
        # a label an entry calls absent is background there (the dataset check refuses such a label map anyway)
        present_here = torch.gather(present, 1, safe.flatten(1)).view_as(safe) > 0
        safe = torch.where(present_here, safe, torch.zeros_like(safe))
        log_p = torch.log_softmax(logits, dim=1)
        foreground = torch.arange(n_classes, device=logits.device).view(1, -1, *spatial) > 0
        # log(p_background + the absent classes' p): the present foreground classes are left out of the sum
        merged_background = torch.logsumexp(log_p.masked_fill(kept & foreground, -torch.inf), dim=1, keepdim=True)
        log_q = torch.cat([merged_background, log_p[:, 1:].masked_fill(~kept[:, 1:], -torch.inf)], dim=1)
        per_voxel = -torch.gather(log_q, 1, safe[:, None])[:, 0]
        ce = (per_voxel * weight).sum() / weight.sum().clamp(min=1.0)
        probabilities = log_q.exp() * weight[:, None]
        onehot = F.one_hot(safe, n_classes).movedim(-1, 1).to(logits.dtype) * weight[:, None]
        dims = [0, *range(2, logits.ndim)]
        scored = kept.to(logits.dtype)  # an absent class's Dice sums skip the cases that lack it
        intersection = (probabilities * onehot * scored).sum(dims)
        denominator = ((probabilities + onehot) * scored).sum(dims)
        dice = 1.0 - (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        anywhere = present.amax(0) > 0  # a class absent from every case of the batch has no Dice term
        return dice[anywhere].mean() + ce
