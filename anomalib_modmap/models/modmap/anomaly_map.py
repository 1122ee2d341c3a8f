"""Per-view anomaly maps from token distances: aggregation, upsampling and foreground."""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

Aggregation = Literal["max", "min", "product", "mean"]
AGGREGATIONS: tuple[str, ...] = ("max", "min", "product", "mean")


def aggregate_distances(image_to_depth: torch.Tensor, depth_to_image: torch.Tensor, aggregation: Aggregation = "max") -> torch.Tensor:
    """Combine the two per-direction distance maps elementwise with ``aggregation``."""
    if aggregation == "max":
        return torch.maximum(image_to_depth, depth_to_image)
    if aggregation == "min":
        return torch.minimum(image_to_depth, depth_to_image)
    if aggregation == "product":
        return image_to_depth * depth_to_image
    if aggregation == "mean":
        return 0.5 * (image_to_depth + depth_to_image)
    msg = f"Unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}."
    raise ValueError(msg)


def clean_foreground(valid: torch.Tensor) -> torch.Tensor:
    """Clean valid-depth masks ``(V, H, W)`` into object foreground masks ``(V, H, W)`` bool.

    Each view's mask goes through a 3x3 binary opening (pixels outside the
    image count as invalid), which removes isolated valid pixels and thin
    bridges, and then keeps only its largest 8-connected component (on a tie,
    the one OpenCV numbers first). A view without valid pixels stays empty.
    The work runs on the CPU with OpenCV, about three times faster than
    ``scipy.ndimage`` for 896 x 896 views (measured on a 2-core CPU).
    The tests check that it gives the same masks as ``scipy.ndimage``.
    """
    masks = valid.detach().bool().cpu().numpy().astype(np.uint8)
    kernel = np.ones((3, 3), dtype=np.uint8)
    cleaned = np.zeros(masks.shape, dtype=bool)
    for index, mask in enumerate(masks):
        opened = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
        if count <= 1:
            continue
        largest = 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())
        cleaned[index] = labels == largest
    return torch.from_numpy(cleaned).to(valid.device)


def foreground_tokens(foreground: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Downsample pixel foreground ``(V, H, W)`` to token foreground ``(V, h*w)``.

    A token is foreground when any pixel of its patch is, so that every token
    whose value reaches a foreground pixel of the anomaly map is trained.
    """
    fraction = F.adaptive_avg_pool2d(foreground[:, None].float(), grid)
    return (fraction > 0).flatten(1)


class AnomalyMapGenerator(nn.Module):
    """Turn token distances into pixel anomaly maps.

    Inputs: ``image_to_depth`` and ``depth_to_image`` distances ``(V, h*w)`` on the
    token grid ``grid`` and the pixel foreground mask ``(V, H, W)``. Output:
    ``(V, H, W)`` float32 anomaly maps (``1 - cosine`` units, in [0, 2] for
    ``max``/``min``/``mean``), zero outside the foreground.

    The upsampling is bilinear and normalised over foreground tokens: a pixel
    takes the bilinear weights of the foreground tokens around it only, so
    background tokens, which training never sees, do not change the scores at
    the object's border.

    Args:
        aggregation: how the two directions combine per token: ``max`` (default),
            ``min``, ``product`` or ``mean``.
    """

    def __init__(self, aggregation: Aggregation = "max") -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            msg = f"Unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}."
            raise ValueError(msg)
        self.aggregation = aggregation

    def forward(
        self,
        image_to_depth: torch.Tensor,
        depth_to_image: torch.Tensor,
        grid: tuple[int, int],
        foreground: torch.Tensor,
    ) -> torch.Tensor:
        """Compute the anomaly maps."""
        combined = aggregate_distances(image_to_depth.float(), depth_to_image.float(), self.aggregation)
        foreground = foreground.to(combined.device)
        token_mask = foreground_tokens(foreground, grid).to(combined.dtype)
        size = tuple(foreground.shape[-2:])

        weighted = (combined * token_mask).reshape(-1, 1, *grid)
        weights = token_mask.reshape(-1, 1, *grid)
        upsampled = F.interpolate(weighted, size=size, mode="bilinear", align_corners=False)[:, 0]
        coverage = F.interpolate(weights, size=size, mode="bilinear", align_corners=False)[:, 0]
        upsampled = upsampled / coverage.clamp_min(1e-6)
        return torch.where(foreground, upsampled, torch.zeros_like(upsampled))
