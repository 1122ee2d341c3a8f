"""Anomaly detection models of anomalib-modmap."""

from .baselines.cfm_sim3d import CfmSim3d
from .modmap.lightning_model import Modmap

__all__ = ["CfmSim3d", "Modmap"]
