"""Training loss: cross-entropy (ignore label 255) on the main output plus weighted auxiliary terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .classes import IGNORE_INDEX


class PSPLoss(nn.Module):
    """`CE(out) + aux_weight * CE(aux)`, as in the paper (aux_weight 0.4, auxiliary head in training only)."""

    def __init__(self, aux_weight: float = 0.4, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index

    def forward(self, outputs: dict[str, torch.Tensor], target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns `loss` (the total to backpropagate) and each term (`main`, `aux`)."""
        terms = {"main": F.cross_entropy(outputs["out"], target, ignore_index=self.ignore_index)}
        total = terms["main"]
        if "aux" in outputs and self.aux_weight > 0:
            terms["aux"] = F.cross_entropy(outputs["aux"], target, ignore_index=self.ignore_index)
            total = total + self.aux_weight * terms["aux"]
        return {"loss": total, **terms}
