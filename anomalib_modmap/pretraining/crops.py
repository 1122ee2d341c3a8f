"""Multi-crop augmentation of depth maps and grayscale images with validity masks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from sim3d_datamodule.transforms import normalize_gray


@dataclass(frozen=True)
class CropSettings:
    """Settings of the multi-crop augmentation (defaults: DINOv2 for ViT-S/14, geometric only).

    Sizes are in pixels and must be multiples of the patch size; scales are fractions of the view
    area. ``rotation_degrees`` is the largest absolute in-plane rotation. ``value_scale`` and
    ``value_offset`` jitter the normalised depth (or the gray level) of the valid pixels of each
    crop as ``value * scale + offset``. ``drop_fraction`` is the largest fraction of valid pixels
    that a crop sets invalid at random. A crop is drawn again (up to ``max_attempts`` times) while less
    than ``min_valid_fraction`` of its pixels are valid. ``blur_probability`` applies to images only.
    """

    global_crops: int = 2
    global_size: int = 224
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_crops: int = 8
    local_size: int = 98
    local_scale: tuple[float, float] = (0.05, 0.32)
    aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation_degrees: float = 10.0
    horizontal_flip: float = 0.5
    vertical_flip: float = 0.0
    value_scale: tuple[float, float] = (0.9, 1.1)
    value_offset: tuple[float, float] = (-0.05, 0.05)
    drop_fraction: float = 0.05
    min_valid_fraction: float = 0.25
    max_attempts: int = 10
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)


def _uniform(bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand(()))


def crop_affine(height: int, width: int, scale: tuple[float, float], settings: CropSettings) -> torch.Tensor:
    """Draw a random rotated, flipped crop box; return the ``(2, 3)`` matrix for ``F.affine_grid``.

    The box covers a fraction ``scale`` of the view area, with an aspect ratio drawn
    log-uniformly in ``settings.aspect_ratio``; it stays inside the view before rotation.
    """
    area = height * width
    box_w, box_h = float(width), float(height)
    for _ in range(10):
        target = area * _uniform(scale)
        log_ratio = (math.log(settings.aspect_ratio[0]), math.log(settings.aspect_ratio[1]))
        ratio = math.exp(_uniform(log_ratio))
        candidate_w = math.sqrt(target * ratio)
        candidate_h = math.sqrt(target / ratio)
        if candidate_w <= width and candidate_h <= height:
            box_w, box_h = candidate_w, candidate_h
            break
    else:
        side = min(height, width, math.sqrt(area * scale[1]))
        box_w = box_h = side

    center_x = box_w / 2 + (width - box_w) * float(torch.rand(()))
    center_y = box_h / 2 + (height - box_h) * float(torch.rand(()))
    angle = math.radians(_uniform((-settings.rotation_degrees, settings.rotation_degrees)))
    cos, sin = math.cos(angle), math.sin(angle)
    flip_x = -1.0 if float(torch.rand(())) < settings.horizontal_flip else 1.0
    flip_y = -1.0 if float(torch.rand(())) < settings.vertical_flip else 1.0

    # Output coordinates (u, v) in [-1, 1] are scaled to the box, rotated and shifted to its centre.
    # Dividing by half the view size turns pixels into affine_grid's normalised input coordinates.
    half_w, half_h = box_w / 2 * flip_x, box_h / 2 * flip_y
    return torch.tensor(
        [
            [half_w * cos / (width / 2), -half_h * sin / (width / 2), 2 * center_x / width - 1],
            [half_w * sin / (height / 2), half_h * cos / (height / 2), 2 * center_y / height - 1],
        ],
        dtype=torch.float32,
    )


def stack_view(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Return ``(1, 2, H, W)``: the values with invalid pixels zeroed, and the validity as float."""
    return torch.stack([torch.where(valid, values, torch.zeros_like(values)), valid.float()])[None]


def resample(stacked: torch.Tensor, affine: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample a view stacked by ``stack_view`` through ``affine`` into a ``size`` x ``size`` crop and its validity.

    Interpolation is bilinear over valid pixels only (normalised convolution): invalid pixels do
    not pull depth towards 0 at object borders. An output pixel is valid when at least half of its
    interpolation weight falls on valid input; pixels outside the view are invalid.
    """
    grid = F.affine_grid(affine[None], [1, 2, size, size], align_corners=False)
    sampled = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    weight = sampled[1]
    crop_valid = weight >= 0.5
    crop = torch.where(crop_valid, sampled[0] / weight.clamp_min(1e-6), torch.zeros_like(weight))
    return crop, crop_valid


class MultiCrop:
    """Turns one normalised view into global and local crops for the student and the teacher.

    ``__call__`` takes ``values`` ``(H, W)`` (normalised depth in [0, 1] with 0 where invalid, or
    gray in [0, 1]) and ``valid`` ``(H, W)`` bool. It returns global crops ``(G, C, S, S)``, their
    validity ``(G, S, S)``, and local crops ``(L, C, s, s)``. Depth crops have ``C = 1`` and stay 0
    on invalid pixels (as at inference); image crops go through ``normalize_gray`` with
    ``channels`` channels.
    """

    def __init__(self, settings: CropSettings, modality: str, channels: int = 1) -> None:
        if modality not in ("depth", "image"):
            msg = f"Unknown modality {modality!r}; use 'depth' or 'image'."
            raise ValueError(msg)
        if modality == "depth" and channels != 1:
            msg = f"Depth crops have one channel, got channels={channels}."
            raise ValueError(msg)
        self.settings = settings
        self.modality = modality
        self.channels = channels

    def __call__(self, values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(global_crops, global_valid, local_crops)``."""
        settings = self.settings
        stacked = stack_view(values, valid)
        global_pairs = [self._crop(stacked, settings.global_size, settings.global_scale) for _ in range(settings.global_crops)]
        local_pairs = [self._crop(stacked, settings.local_size, settings.local_scale) for _ in range(settings.local_crops)]

        global_crops = torch.stack([crop for crop, _ in global_pairs])
        global_valid = torch.stack([mask for _, mask in global_pairs])
        if local_pairs:
            local_crops = torch.stack([crop for crop, _ in local_pairs])
        else:
            local_crops = torch.zeros(0, self.channels, settings.local_size, settings.local_size)
        return global_crops, global_valid, local_crops

    def _crop(self, stacked: torch.Tensor, size: int, scale: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = stacked.shape[-2:]
        crop, crop_valid = stacked.new_zeros(size, size), torch.zeros(size, size, dtype=torch.bool)
        for _ in range(self.settings.max_attempts):
            crop, crop_valid = resample(stacked, crop_affine(height, width, scale, self.settings), size)
            if float(crop_valid.float().mean()) >= self.settings.min_valid_fraction:
                break
        # NOTE: after max_attempts the last crop is kept even when mostly invalid. Its invalid
        # patches are never masked, so they stay out of the iBOT loss, but its class token counts.
        return self._jitter(crop, crop_valid)

    def _jitter(self, crop: torch.Tensor, crop_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        settings = self.settings
        if settings.drop_fraction > 0:
            dropped = torch.rand(crop.shape) < settings.drop_fraction * float(torch.rand(()))
            crop_valid = crop_valid & ~dropped

        if self.modality == "depth":
            jittered = crop * _uniform(settings.value_scale) + _uniform(settings.value_offset)
            crop = torch.where(crop_valid, jittered, torch.zeros_like(crop))
            return crop[None], crop_valid

        mean = crop[crop_valid].mean() if crop_valid.any() else crop.new_zeros(())
        jittered = ((crop - mean) * _uniform(settings.value_scale) + mean + _uniform(settings.value_offset)).clamp(0.0, 1.0)
        crop = torch.where(crop_valid, jittered, torch.zeros_like(crop))
        if float(torch.rand(())) < settings.blur_probability:
            sigma = _uniform(settings.blur_sigma)
            kernel = 2 * math.ceil(3 * sigma) + 1
            crop = TF.gaussian_blur(crop[None], kernel_size=[kernel, kernel], sigma=[sigma, sigma])[0]
        return normalize_gray(crop[None], channels=self.channels), crop_valid
