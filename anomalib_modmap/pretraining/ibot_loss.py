"""iBOT masked-patch loss: the student predicts the teacher's patch tokens it did not see."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IBOTPatchLoss(nn.Module):
    """Cross-entropy between student and teacher distributions of the masked patch tokens.

    ``forward`` takes the student logits ``(N, K)`` and the centred teacher targets ``(N, K)`` of
    the ``N`` masked patches of the batch, and ``image_index`` ``(N,)``, the global-crop image each
    patch belongs to. Every image with masked patches weighs the same, whatever its number of
    masked patches; patches on invalid depth were never masked, so they take no part.
    """

    def __init__(self, student_temperature: float = 0.1) -> None:
        super().__init__()
        self.student_temperature = student_temperature

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_targets: torch.Tensor,
        image_index: torch.Tensor,
    ) -> torch.Tensor:
        """Return the scalar loss; 0 (still connected to the graph) when no patch is masked."""
        if student_logits.shape[0] == 0:
            return student_logits.sum() * 0.0

        log_probs = F.log_softmax(student_logits.float() / self.student_temperature, dim=-1)
        per_patch = -(teacher_targets.float() * log_probs).sum(dim=-1)

        images, inverse, counts = torch.unique(image_index, return_inverse=True, return_counts=True)
        weights = 1.0 / counts[inverse].float() / images.numel()
        return (per_patch * weights).sum()
