"""Modmap: cross-view crossmodal feature mapping for multi-view RGB-D anomaly detection."""

from .torch_model import CrossModalMapper, ModmapModel, ViewFeatures, ViewModulator

__all__ = ["CrossModalMapper", "ModmapModel", "ViewFeatures", "ViewModulator"]
