"""Anomaly detection models of anomalib-modmap."""

from .modmap.lightning_model import Modmap  # isort: skip
from .baselines.cfm_sim3d import CfmSim3d

__all__ = ["CfmSim3d", "Modmap"]
