"""In-memory multi-view scenes and purpose-built encoder weights for Modmap tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import timm
import torch

from sim3d_datamodule.transforms import GRAY_MEAN, GRAY_STD

# Patch-statistics encoder: see ``save_patch_statistics_weights``.
PATCH = 8
STATISTICS_KWARGS = {"patch_size": PATCH, "embed_dim": 4, "depth": 1, "num_heads": 1, "img_size": 64}


@dataclasses.dataclass
class FakeMultiViewBatch:
    """The fields of a multi-view batch that Modmap reads and writes, without anomalib's validation."""

    image: torch.Tensor
    depth_map: torch.Tensor
    valid_depth: torch.Tensor
    intrinsics: torch.Tensor
    world_to_camera: torch.Tensor
    view_index: torch.Tensor
    instance: list[str]
    gt_volume: list | None = None
    anomaly_map: torch.Tensor | None = None
    pred_score: torch.Tensor | None = None
    pred_volume: list | None = None

    def update(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)
        return self


def smooth_scene(
    name: str,
    seed: int,
    num_views: int = 6,
    size: int = 64,
    stain_views: tuple[int, ...] = (),
    dent_views: tuple[int, ...] = (),
) -> FakeMultiViewBatch:
    """Render a wavy surface from ``num_views`` slightly shifted viewpoints.

    The image is a shading-like function of the nominal depth plus 1% noise
    (``seed``) on a black background, so image and depth tokens relate the same
    way in every view.
    ``stain_views`` get a bright square painted into the image only;
    ``dent_views`` get a 30 cm dent in the depth only.
    """
    generator = torch.Generator().manual_seed(seed)
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    object_mask = (rows.abs() < 0.8) & (cols.abs() < 0.8)
    low, high = int(0.25 * size), int(0.6 * size)
    images, depths = [], []
    for view in range(num_views):
        shifted_cols, shifted_rows = cols + 0.04 * view, rows - 0.03 * view
        depth = 1.0 + 0.05 * torch.sin(3 * shifted_cols) * torch.cos(2 * shifted_rows) + 0.03 * shifted_rows
        image = 0.5 + 4.0 * (depth - 1.0) + 0.01 * torch.randn(size, size, generator=generator)
        if view in stain_views:
            image[low:high, low:high] = 1.5
        if view in dent_views:
            depth[low + 8 : high + 8, low + 8 : high + 8] -= 0.3
        depth = torch.where(object_mask, depth, torch.zeros_like(depth))
        image = torch.where(object_mask, image, torch.zeros_like(image))
        images.append(((image - GRAY_MEAN) / GRAY_STD).expand(3, size, size))
        depths.append(depth[None])

    depth_map = torch.stack(depths)[None]
    return FakeMultiViewBatch(
        image=torch.stack(images)[None],
        depth_map=depth_map,
        valid_depth=depth_map > 0,
        intrinsics=torch.eye(3, dtype=torch.float64).repeat(1, num_views, 1, 1),
        world_to_camera=torch.eye(4, dtype=torch.float64).repeat(1, num_views, 1, 1),
        view_index=torch.arange(num_views)[None],
        instance=[name],
    )


def save_patch_statistics_weights(path: Path, in_chans: int) -> Path:
    """Write timm weights of a ViT whose patch embedding computes patch statistics.

    The four channels of each patch token are a constant 1, four times the
    patch mean, and the patch's horizontal and vertical intensity ramps. The
    position embedding and every other weight are zero. Read with ``num_blocks=0`` and
    ``final_norm=False``, the tokens describe the local level and slope of the
    image or depth, so a bright stain or a dent changes them strongly, whereas
    random ViT weights carry almost no local signal.
    """
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, in_chans=in_chans, **STATISTICS_KWARGS)
    state_dict = {key: torch.zeros_like(value) for key, value in model.state_dict().items()}
    weight, bias = state_dict["patch_embed.proj.weight"], state_dict["patch_embed.proj.bias"]
    pixels = in_chans * PATCH * PATCH
    ramp = torch.linspace(-1, 1, PATCH)
    bias[0] = 1.0
    weight[1] = 4.0 / pixels
    weight[2] = ramp[None, None, :] * 8 / pixels
    weight[3] = ramp[None, :, None] * 8 / pixels
    torch.save(state_dict, path)
    return path
