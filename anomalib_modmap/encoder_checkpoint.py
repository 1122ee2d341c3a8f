"""Encoder checkpoint files: the weights that pretraining writes and Modmap's backbones read.

A file is a ``torch.save`` dictionary with these keys:

- ``format``: the string ``ENCODER_FORMAT``;
- ``timm_name``: the timm model name, for example ``"vit_small_patch14_dinov2"``;
- ``timm_kwargs``: the keyword arguments given to ``timm.create_model`` besides the name
  (``in_chans``, ``img_size``, ``dynamic_img_size``, ``reg_tokens`` and any size overrides);
- ``state_dict``: the backbone's timm-keyed state dict;
- ``modality``: ``"depth"`` or ``"image"``;
- ``depth_normalization``: ``"max"`` or ``"minmax"`` for depth encoders, absent for image encoders.

Optional keys (``pretraining``: the training settings, step count and final losses) are kept
when reading and ignored when rebuilding the backbone.

This module imports neither the model nor the pretraining code, so both can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from sim3d_datamodule.transforms import DEPTH_NORMALIZATIONS

ENCODER_FORMAT = "anomalib-modmap-encoder/1"
MODALITIES: tuple[str, ...] = ("depth", "image")
_REQUIRED_KEYS = ("format", "timm_name", "timm_kwargs", "state_dict", "modality")


@dataclass
class EncoderCheckpoint:
    """Contents of an encoder checkpoint file.

    ``state_dict`` contains the timm-keyed tensors of the backbone. ``depth_normalization`` is the
    ``sim3d_datamodule.transforms.normalize_depth`` mode that the depth encoder was trained with,
    and ``None`` for image encoders. ``extra`` keeps any further keys of the file.
    """

    timm_name: str
    timm_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    modality: str
    depth_normalization: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def build_backbone(self) -> nn.Module:
        """Create the timm backbone without downloading anything and load the stored weights strictly."""
        backbone = timm.create_model(self.timm_name, pretrained=False, **self.timm_kwargs)
        backbone.load_state_dict(self.state_dict, strict=True)
        return backbone


def save_encoder_checkpoint(
    path: str | Path,
    backbone: nn.Module,
    timm_name: str,
    timm_kwargs: dict[str, Any],
    modality: str,
    depth_normalization: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``backbone``'s weights as an encoder checkpoint file and return its path.

    The tensors are detached, moved to the CPU and stored in float32 (a bf16 training run still
    saves float32 weights). Parent folders are created. ``depth_normalization`` is required for
    ``modality="depth"`` and must be ``None`` for images.
    """
    _check_modality(modality, depth_normalization, source="save_encoder_checkpoint")
    state_dict = {
        key: (value.detach().to("cpu", torch.float32) if value.is_floating_point() else value.detach().cpu())
        for key, value in backbone.state_dict().items()
    }
    payload: dict[str, Any] = dict(extra or {})
    payload.update(
        format=ENCODER_FORMAT,
        timm_name=timm_name,
        timm_kwargs=dict(timm_kwargs),
        state_dict=state_dict,
        modality=modality,
    )
    if depth_normalization is not None:
        payload["depth_normalization"] = depth_normalization

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def read_encoder_checkpoint(path: str | Path) -> EncoderCheckpoint:
    """Read and validate an encoder checkpoint file; raise ``ValueError`` naming the file on bad content."""
    path = Path(path)
    if not path.is_file():
        msg = f"Encoder checkpoint {path} not found; pass the file written by `modmap pretrain-depth/-image`."
        raise FileNotFoundError(msg)

    # weights_only=True: the file contains tensors, strings, numbers and dicts only.
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return parse_encoder_checkpoint(payload, str(path))


def parse_encoder_checkpoint(payload: object, source: str) -> EncoderCheckpoint:
    """Validate an already loaded checkpoint dictionary; ``source`` names it in error messages."""
    if not isinstance(payload, dict):
        msg = f"Encoder checkpoint {source} contains a {type(payload).__name__}, expected a dictionary."
        raise ValueError(msg)
    missing = [key for key in _REQUIRED_KEYS if key not in payload]
    if missing:
        hint = " It looks like a Lightning checkpoint; export the encoder with the pretrain command." if (
            "state_dict" in payload and "format" not in payload
        ) else ""
        msg = f"Encoder checkpoint {source} lacks the keys {missing}.{hint}"
        raise ValueError(msg)
    if payload["format"] != ENCODER_FORMAT:
        msg = f"Encoder checkpoint {source} has format {payload['format']!r}; this version reads {ENCODER_FORMAT!r}."
        raise ValueError(msg)

    modality = payload["modality"]
    depth_normalization = payload.get("depth_normalization")
    _check_modality(modality, depth_normalization, source=source)

    known = set(_REQUIRED_KEYS) | {"depth_normalization"}
    return EncoderCheckpoint(
        timm_name=payload["timm_name"],
        timm_kwargs=dict(payload["timm_kwargs"]),
        state_dict=payload["state_dict"],
        modality=modality,
        depth_normalization=depth_normalization,
        extra={key: value for key, value in payload.items() if key not in known},
    )


def load_encoder(path: str | Path) -> tuple[nn.Module, EncoderCheckpoint]:
    """Rebuild the timm backbone stored in ``path``, in eval mode on the CPU, with its checkpoint record."""
    checkpoint = read_encoder_checkpoint(path)
    backbone = checkpoint.build_backbone().eval()
    return backbone, checkpoint


def _check_modality(modality: str, depth_normalization: str | None, source: str) -> None:
    if modality not in MODALITIES:
        msg = f"{source}: modality {modality!r} is invalid; use one of {MODALITIES}."
        raise ValueError(msg)
    if modality == "depth" and depth_normalization not in DEPTH_NORMALIZATIONS:
        msg = (
            f"{source}: a depth encoder needs depth_normalization in {DEPTH_NORMALIZATIONS}, "
            f"got {depth_normalization!r}."
        )
        raise ValueError(msg)
    if modality == "image" and depth_normalization is not None:
        msg = f"{source}: an image encoder takes no depth_normalization, got {depth_normalization!r}."
        raise ValueError(msg)
