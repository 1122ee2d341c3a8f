"""Grayscale and depth normalisation shared by training, inference and pretraining."""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional

from sim3d_datamodule.geometry import square_padding

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


def _as_planes(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """Reshape ``(..., H, W)`` to ``(N, 1, H, W)`` for torch's padding and resizing ops."""
    leading = tensor.shape[:-2]
    return tensor.reshape(-1, 1, *tensor.shape[-2:]), leading


def pad_resize_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Edge-pad images ``(..., H, W)`` to a square, then resize them bilinearly to ``size`` x ``size``.

    Padding repeats the border pixels so that encoders see no artificial edge.
    Downsizing uses antialiasing. Both keep the pixel-centre mapping of
    :func:`~sim3d_datamodule.geometry.pad_resize_intrinsics`. Returns float32.
    """
    height, width = image.shape[-2:]
    top, bottom, left, right = square_padding(height, width)
    planes, leading = _as_planes(image.float())
    padded = functional.pad(planes, (left, right, top, bottom), mode="replicate")
    side = max(height, width)
    if side != size:
        padded = functional.interpolate(padded, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
    return padded.reshape(*leading, size, size)


def pad_resize_mask(mask: torch.Tensor, size: int, fill: float = 0) -> torch.Tensor:
    """Pad maps ``(..., H, W)`` with ``fill`` to a square, then resize with ``nearest-exact`` to ``size`` x ``size``.

    Suits depth maps, valid masks and label maps: no value is interpolated. The
    dtype of ``mask`` is kept.
    """
    height, width = mask.shape[-2:]
    top, bottom, left, right = square_padding(height, width)
    planes, leading = _as_planes(mask)
    work = planes.to(torch.float64) if planes.dtype == torch.float64 else planes.to(torch.float32)
    padded = functional.pad(work, (left, right, top, bottom), mode="constant", value=float(fill))
    if max(height, width) != size:
        padded = functional.interpolate(padded, size=(size, size), mode="nearest-exact")
    return padded.reshape(*leading, size, size).to(mask.dtype)


def pad_resize_depth(depth: torch.Tensor, valid: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad and resize depth ``(..., H, W)`` in metres and its valid mask to ``size`` x ``size``.

    The padding is invalid (depth 0, mask false), unlike the edge padding of
    images: repeating border depth would create points that no camera saw.
    Resizing uses ``nearest-exact``, so every output depth is a measured one.
    """
    resized_depth = pad_resize_mask(torch.where(valid.bool(), depth, torch.zeros_like(depth)), size)
    resized_valid = pad_resize_mask(valid.bool(), size)
    return resized_depth, resized_valid
