"""Grayscale and depth normalisation shared by training, inference and pretraining."""

from __future__ import annotations

from typing import Literal

import torch

# Statistics of SiM3D grayscale images after scaling each image by its maximum.
GRAY_MEAN = 0.445
GRAY_STD = 0.269

DepthNormalization = Literal["max", "minmax"]
DEPTH_NORMALIZATIONS: tuple[str, ...] = ("max", "minmax")


def normalize_gray(image: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Scale grayscale images ``(..., 1, H, W)`` by their maximum, standardise, repeat to ``channels``.

    Each image is divided by its own maximum (an all-zero image stays zero),
    then standardised with ``GRAY_MEAN`` and ``GRAY_STD``.
    """
    image = image.float()
    peak = image.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    scaled = (image / peak - GRAY_MEAN) / GRAY_STD
    return scaled.expand(*scaled.shape[:-3], channels, *scaled.shape[-2:]).contiguous()


def normalize_depth(depth: torch.Tensor, valid: torch.Tensor, mode: DepthNormalization = "max") -> torch.Tensor:
    """Map depth ``(..., H, W)`` in metres to [0, 1] per view; invalid pixels become 0.

    ``mode="max"`` divides by the maximum valid depth of the view (the published
    DINO-Depth recipe); ``mode="minmax"`` maps the valid range of the view onto
    [0, 1]. A view with no valid pixel returns all zeros.
    """
    if mode not in DEPTH_NORMALIZATIONS:
        msg = f"Unknown depth normalisation {mode!r}; choose one of {DEPTH_NORMALIZATIONS}."
        raise ValueError(msg)

    depth = depth.float()
    valid = valid.bool() & torch.isfinite(depth) & (depth > 0)
    clean = torch.where(valid, depth, torch.zeros_like(depth))
    peak = clean.amax(dim=(-2, -1), keepdim=True)

    if mode == "max":
        scaled = clean / peak.clamp_min(torch.finfo(torch.float32).tiny)
    else:
        low = torch.where(valid, depth, torch.full_like(depth, float("inf"))).amin(dim=(-2, -1), keepdim=True)
        low = torch.where(torch.isfinite(low), low, torch.zeros_like(low))
        span = (peak - low).clamp_min(torch.finfo(torch.float32).tiny)
        scaled = (clean - low) / span

    return torch.where(valid, scaled, torch.zeros_like(scaled))
