"""Volumetric anomaly metrics as anomalib metrics: V-AUPRO and I-AUROC on voxel anomaly volumes.

Both read the batch fields ``pred_volume`` (list of ``(M_i,)`` voxel scores),
``gt_volume`` (list of ``sim3d_datamodule.geometry.VoxelGrid``) and ``gt_label``,
and work in ``anomalib.metrics.Evaluator(test_metrics=[...])``.
"""

from .instance_auroc import InstanceAUROC, rank_auroc, reduce_instance_score
from .regions import label_voxel_regions
from .voxel_aupro import VoxelAUPRO, area_up_to, crossing_threshold, pro_curve

__all__ = [
    "InstanceAUROC",
    "VoxelAUPRO",
    "area_up_to",
    "crossing_threshold",
    "label_voxel_regions",
    "pro_curve",
    "rank_auroc",
    "reduce_instance_score",
]
