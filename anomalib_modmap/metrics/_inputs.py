"""Checks that turn the volume fields of a batch into one entry per instance."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sim3d_datamodule.geometry import VoxelGrid


def instance_scores(pred_volume: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split ``pred_volume`` into one 1-D float tensor of voxel scores per instance.

    Accepts a list of ``(M_i,)`` tensors, a ``(B, M)`` tensor, or one ``(M,)``
    tensor for a single instance. Raises ``ValueError`` on another shape or on NaN.
    """
    if isinstance(pred_volume, torch.Tensor):
        if pred_volume.ndim == 1:
            volumes = [pred_volume]
        elif pred_volume.ndim == 2:
            volumes = list(pred_volume.unbind(0))
        else:
            msg = f"pred_volume must be a list of (M,) tensors or a (B, M) tensor; got shape {tuple(pred_volume.shape)}."
            raise ValueError(msg)
    else:
        volumes = list(pred_volume)

    scores = []
    for index, volume in enumerate(volumes):
        if volume is None:
            msg = f"pred_volume[{index}] is missing; fuse an anomaly volume for every test instance before scoring."
            raise ValueError(msg)
        volume = torch.as_tensor(volume).detach()
        if volume.ndim != 1:
            msg = f"pred_volume[{index}] must be 1-D (one score per voxel); got shape {tuple(volume.shape)}."
            raise ValueError(msg)
        if torch.isnan(volume).any():
            msg = f"pred_volume[{index}] contains NaN voxel scores; every voxel needs a score."
            raise ValueError(msg)
        scores.append(volume if volume.is_floating_point() else volume.double())
    return scores


def instance_grids(gt_volume: VoxelGrid | Sequence[VoxelGrid | None], count: int) -> list[VoxelGrid | None]:
    """Return ``gt_volume`` as a list of ``count`` grids (``None`` where an instance has none)."""
    grids = [gt_volume] if isinstance(gt_volume, VoxelGrid) else list(gt_volume)
    if len(grids) != count:
        msg = f"gt_volume has {len(grids)} entries but pred_volume has {count}; they must match one to one."
        raise ValueError(msg)
    return grids


def instance_labels(gt_label: torch.Tensor | Sequence[int] | int | None, count: int) -> list[int] | None:
    """Return ``count`` instance labels (0 nominal, 1 anomalous), or ``None`` when ``gt_label`` is ``None``."""
    if gt_label is None:
        return None
    labels = torch.as_tensor(gt_label).detach().cpu().reshape(-1)
    if labels.numel() != count:
        msg = f"gt_label has {labels.numel()} entries but pred_volume has {count}; they must match one to one."
        raise ValueError(msg)
    values = [int(label) for label in labels.to(torch.int64)]
    if any(value not in (0, 1) for value in values) or not torch.equal(labels.double(), torch.tensor(values, dtype=torch.float64)):
        msg = f"gt_label must hold 0 (nominal) or 1 (anomalous) per instance; got {labels.tolist()}."
        raise ValueError(msg)
    return values
