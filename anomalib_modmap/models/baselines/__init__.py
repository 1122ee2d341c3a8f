"""Baselines on multi-view data: single-view anomalib models per view, and CFM in its SiM3D configuration."""

from .cfm_sim3d import CfmSim3d
from .per_view import (
    BaselineWeightsError,
    InstanceVolume,
    PerViewVolumeFusion,
    build_per_view_model,
    check_pointmae_weights,
    fuse_view_maps,
    random_timm_weights,
    score_volumes,
    write_random_pointmae_weights,
)

__all__ = [
    "BaselineWeightsError",
    "CfmSim3d",
    "InstanceVolume",
    "PerViewVolumeFusion",
    "build_per_view_model",
    "check_pointmae_weights",
    "fuse_view_maps",
    "random_timm_weights",
    "score_volumes",
    "write_random_pointmae_weights",
]
