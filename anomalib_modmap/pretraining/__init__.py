"""DINOv2-style self-supervised pretraining of depth and grayscale image encoders."""
