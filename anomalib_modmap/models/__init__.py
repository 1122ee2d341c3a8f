"""Anomaly detection models of anomalib-modmap."""
