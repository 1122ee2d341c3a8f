"""Anomaly detection models of anomalib-modmap."""

from .modmap.lightning_model import Modmap

__all__ = ["Modmap"]
