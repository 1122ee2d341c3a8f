"""Training loss of Modmap: cosine distance between mapped and target tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def cosine_distance(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return ``1 - cosine`` between ``predicted`` and ``target`` ``(..., N, C)`` as ``(..., N)`` in float32."""
    return 1.0 - F.cosine_similarity(predicted.float(), target.float(), dim=-1, eps=1e-8)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the entries where ``mask`` is true; 0 when the mask is empty."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class ModmapLoss(nn.Module):
    """Sum of the image->depth and depth->image losses over a batch of view pairs.

    Each direction is the mean over foreground tokens of ``1 - cosine`` between
    the mapped source tokens and the target view's tokens of the other modality.

    Inputs ``(P, N, C)`` per direction and ``foreground`` ``(P, N)`` bool (the
    target view's foreground tokens). Output: a scalar.
    """

    def forward(
        self,
        image_to_depth: torch.Tensor,
        depth_target: torch.Tensor,
        depth_to_image: torch.Tensor,
        image_target: torch.Tensor,
        foreground: torch.Tensor,
    ) -> torch.Tensor:
        """Compute the two-direction loss."""
        loss_depth = masked_mean(cosine_distance(image_to_depth, depth_target), foreground)
        loss_image = masked_mean(cosine_distance(depth_to_image, image_target), foreground)
        return loss_depth + loss_image
