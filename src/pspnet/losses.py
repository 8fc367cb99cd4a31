"""Training loss: cross-entropy (ignore label 255) on the main output plus weighted auxiliary terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .classes import IGNORE_INDEX


def class_presence(target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(N, K) float targets: 1 where class k labels at least one pixel of mask n; ignored pixels do not count."""
    labels = target.flatten(1).long()
    labels = torch.where(labels == ignore_index, num_classes, labels)  # ignored pixels go to an extra slot
    present = torch.zeros(labels.shape[0], num_classes + 1, device=target.device)
    present.scatter_(1, labels, 1.0)
    return present[:, :num_classes]


class PSPLoss(nn.Module):
    """`CE(out) + aux_weight * CE(aux) + cls_weight * BCE(cls, class_presence(target))`.

    The paper's loss is the first two terms (aux_weight 0.4); the third is seed 001's image-level
    class-presence loss. Each auxiliary term counts only when the model returned that output.
    """

    def __init__(self, aux_weight: float = 0.4, cls_weight: float = 1.0, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.aux_weight = aux_weight
        self.cls_weight = cls_weight
        self.ignore_index = ignore_index

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
        """Mean cross-entropy over the labelled pixels; with `pixels`, the sum divided by that count instead."""
        if pixels is None:
            return F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="sum") / pixels

    def forward(
        self, outputs: dict[str, torch.Tensor], target: torch.Tensor, pixels: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Returns `loss` (the total to backpropagate) and each term (`main`, `aux`, `cls`).

        `pixels` replaces the count of labelled pixels the cross-entropy sums are divided by: on each of
        N processes, the global count / N, so that the gradients DDP averages equal one process's on
        the whole batch however the ignored pixels fall.
        """
        terms = {"main": self.cross_entropy(outputs["out"], target, pixels)}
        total = terms["main"]
        if "aux" in outputs and self.aux_weight > 0:
            terms["aux"] = self.cross_entropy(outputs["aux"], target, pixels)
            total = total + self.aux_weight * terms["aux"]
        if "cls" in outputs and self.cls_weight > 0:
            presence = class_presence(target, outputs["cls"].shape[1], self.ignore_index)
            terms["cls"] = F.binary_cross_entropy_with_logits(outputs["cls"], presence)
            total = total + self.cls_weight * terms["cls"]
        return {"loss": total, **terms}
