"""Baselines on multi-view data: single-view anomalib models per view, and CFM in its SiM3D configuration."""

from .cfm_sim3d import CfmSim3d
from .per_view import (
    BaselineWeightsError,
    EfficientAdTrainingQuantiles,
    InstanceVolume,
    PerViewVolumeFusion,
    build_per_view_model,
    check_per_view_data,
    check_pointmae_weights,
    efficient_ad_teacher_path,
    fuse_view_maps,
    per_view_callbacks,
    per_view_data_defaults,
    random_timm_weights,
    score_volumes,
    timm_overrides,
    write_penalty_images,
    write_random_pointmae_weights,
)

__all__ = [
    "BaselineWeightsError",
    "EfficientAdTrainingQuantiles",
    "CfmSim3d",
    "InstanceVolume",
    "PerViewVolumeFusion",
    "build_per_view_model",
    "check_per_view_data",
    "check_pointmae_weights",
    "efficient_ad_teacher_path",
    "fuse_view_maps",
    "per_view_callbacks",
    "per_view_data_defaults",
    "random_timm_weights",
    "score_volumes",
    "timm_overrides",
    "write_penalty_images",
    "write_random_pointmae_weights",
]
