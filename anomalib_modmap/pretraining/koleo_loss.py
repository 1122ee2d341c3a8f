"""KoLeo regulariser: spreads the class tokens of a batch uniformly over the unit sphere."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy estimate of a batch of features ``(B, D)``, negated.

    The features are L2-normalised. The loss is the batch mean of ``-log(d_i + eps)``, where
    ``d_i`` is the distance of sample ``i`` to its nearest neighbour in the batch.
    Minimising it pushes samples apart. A batch of one sample returns 0.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss of ``features`` ``(B, D)``."""
        if features.shape[0] < 2:
            return features.sum() * 0.0

        unit = F.normalize(features.float(), dim=-1, eps=self.eps)
        with torch.no_grad():
            similarity = unit @ unit.t()
            similarity.fill_diagonal_(-2.0)
            neighbour = similarity.argmax(dim=1)
        distances = (unit - unit[neighbour]).norm(dim=-1)
        return -torch.log(distances + self.eps).mean()
