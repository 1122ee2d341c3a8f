"""Gather the anomaly volumes a multi-view model produces at test time, and their PRO curve."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from anomalib_modmap.models.baselines.per_view import InstanceVolume


class VolumeCollector(Callback):
    """Keep every test instance's ``pred_volume``, ``gt_volume`` and ``gt_label`` as :class:`InstanceVolume`.

    For models that fuse their own anomaly volumes (Modmap, CfmSim3d); single-view
    models use :class:`~anomalib_modmap.models.baselines.PerViewVolumeFusion`,
    which exposes the same ``volumes`` list.
    """

    def __init__(self) -> None:
        super().__init__()
        self.volumes: list[InstanceVolume] = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Forget the volumes of an earlier test run."""
        del trainer, pl_module
        self.volumes = []

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:  # noqa: ANN401
        """Store the batch's instances."""
        del trainer, pl_module, batch_idx, dataloader_idx
        source = outputs if outputs is not None else batch
        grids = getattr(source, "gt_volume", None) or [None] * len(source.instance)
        scores = getattr(source, "pred_volume", None) or [None] * len(source.instance)
        labels = torch.as_tensor(source.gt_label).reshape(-1).tolist()
        for index, instance in enumerate(source.instance):
            score = None if scores[index] is None else scores[index].detach().float().cpu()
            self.volumes.append(InstanceVolume(str(instance), int(labels[index]), score, grids[index], torch.empty(0)))


def pro_curve_of(volumes: Sequence[InstanceVolume], fpr_limit: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-voxel PRO curve ``(fpr, pro)`` of the volumes up to ``fpr_limit``, interpolated at the limit.

    Empty arrays when the volumes have no nominal voxel or no anomalous region.
    """
    from anomalib_modmap.metrics.voxel_aupro import _VoxelAUPRO

    scored = [volume for volume in volumes if volume.scores is not None]
    metric = _VoxelAUPRO(fpr_limit=fpr_limit)
    if not scored:
        return np.zeros(0), np.zeros(0)
    metric.update([volume.scores for volume in scored], [volume.grid for volume in scored], torch.tensor([volume.label for volume in scored]))
    if int(metric.num_regions) == 0 or not any(part.numel() for part in metric.nominal_scores):
        return np.zeros(0), np.zeros(0)
    fpr, pro, _ = metric.curve()
    fpr, pro = fpr.cpu().numpy(), pro.cpu().numpy()
    keep = int(np.searchsorted(fpr, fpr_limit, side="right"))
    shown_fpr, shown_pro = fpr[:keep].copy(), pro[:keep].copy()
    if keep < fpr.size and keep > 0:
        low, high = fpr[keep - 1], fpr[keep]
        weight = 0.0 if high == low else (fpr_limit - low) / (high - low)
        shown_fpr = np.append(shown_fpr, fpr_limit)
        shown_pro = np.append(shown_pro, pro[keep - 1] + weight * (pro[keep] - pro[keep - 1]))
    return shown_fpr, shown_pro
