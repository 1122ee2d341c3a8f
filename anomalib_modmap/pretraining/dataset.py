"""Dataset of multi-crop samples for DINO-style pretraining."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from sim3d_datamodule.transforms import normalize_depth

from .crops import CropSettings, MultiCrop
from .masking import block_mask
from .sources import SourceFile, read_depth, read_gray


@dataclass(frozen=True)
class MaskSettings:
    """iBOT masking: the share of global crops that get a mask, and the range of masked-patch ratios.

    A patch can be masked only when at least ``min_patch_valid`` of its pixels are valid.
    Defaults follow DINOv2: half of the global crops, 10-50 % of their patches.
    """

    probability: float = 0.5
    ratio: tuple[float, float] = (0.1, 0.5)
    min_patch_valid: float = 0.5


class PretrainDataset(Dataset):
    """Reads depth maps or images and returns multi-crop training samples.

    Item ``i`` is a dict with ``global_crops`` ``(G, C, S, S)``, ``local_crops`` ``(L, C, s, s)``,
    ``masks`` ``(G, S/p, S/p)`` bool (patches the student does not see) and ``patch_valid``
    ``(G, S/p, S/p)`` bool, with ``p`` the patch size. Depth views are normalised as a whole with
    ``normalize_depth(mode=depth_normalization)`` before cropping, as at inference.
    """

    def __init__(
        self,
        files: list[SourceFile],
        modality: str,
        crops: CropSettings,
        patch_size: int,
        depth_normalization: str | None = "max",
        masks: MaskSettings | None = None,
        channels: int = 1,
    ) -> None:
        if not files:
            msg = "PretrainDataset needs at least one file."
            raise ValueError(msg)
        for size in (crops.global_size, crops.local_size):
            if size % patch_size:
                msg = f"Crop size {size} is not a multiple of the patch size {patch_size}; use e.g. {size // patch_size * patch_size}."
                raise ValueError(msg)
        if modality == "depth" and depth_normalization is None:
            msg = "Depth pretraining needs a depth_normalization ('max' or 'minmax')."
            raise ValueError(msg)
        self.files = files
        self.modality = modality
        self.patch_size = patch_size
        self.depth_normalization = depth_normalization
        self.mask_settings = masks or MaskSettings()
        self.multicrop = MultiCrop(crops, modality, channels)

    def __len__(self) -> int:
        return len(self.files)

    def load_view(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the normalised view ``(H, W)`` (depth in [0, 1] or gray in [0, 1]) and its validity."""
        source = self.files[index]
        if self.modality == "depth":
            depth, valid = read_depth(source)
            valid_t = torch.from_numpy(valid)
            values = normalize_depth(torch.from_numpy(depth), valid_t, mode=self.depth_normalization)
            return values, valid_t
        gray = torch.from_numpy(read_gray(source))
        return gray, torch.ones_like(gray, dtype=torch.bool)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        values, valid = self.load_view(index)
        global_crops, global_valid, local_crops = self.multicrop(values, valid)

        patch_fraction = F.avg_pool2d(global_valid[:, None].float(), self.patch_size)[:, 0]
        patch_valid = patch_fraction >= self.mask_settings.min_patch_valid
        masks = torch.zeros_like(patch_valid)
        low, high = self.mask_settings.ratio
        for crop_index in range(masks.shape[0]):
            if float(torch.rand(())) < self.mask_settings.probability:
                ratio = low + (high - low) * float(torch.rand(()))
                masks[crop_index] = block_mask(patch_valid[crop_index], ratio)

        return {
            "global_crops": global_crops,
            "local_crops": local_crops,
            "masks": masks,
            "patch_valid": patch_valid,
        }
