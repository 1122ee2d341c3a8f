"""ViT encoders by name and their weight resolution."""

from .vision_transformer import ENCODER_CONFIGS, EncoderConfig, ViTEncoder, create_encoder, get_encoder_config
from .weights import (
    ENCODER_CHECKPOINT_FORMAT,
    EncoderWeightsError,
    convert_dinov2_state_dict,
    load_encoder_weights,
    read_weights_file,
    resolve_weights,
)

__all__ = [
    "ENCODER_CHECKPOINT_FORMAT",
    "ENCODER_CONFIGS",
    "EncoderConfig",
    "EncoderWeightsError",
    "ViTEncoder",
    "convert_dinov2_state_dict",
    "create_encoder",
    "get_encoder_config",
    "load_encoder_weights",
    "read_weights_file",
    "resolve_weights",
]
