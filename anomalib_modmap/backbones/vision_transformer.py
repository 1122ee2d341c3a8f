"""Frozen ViT encoders that return patch tokens, built from timm by name.

One named configuration per published encoder, kept as data in
``ENCODER_CONFIGS``; any other timm ViT is accepted by its timm name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
import torch.nn.functional as F  # noqa: N812
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .weights import load_encoder_weights, read_weights_file, resolve_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderConfig:
    """Named encoder: the timm architecture and where its pretrained weights come from.

    Attributes:
        name: short name used in configs, e.g. ``"dinov2_vitb14_reg4"``.
        timm_name: timm architecture name, e.g. ``"vit_base_patch14_reg4_dinov2"``.
        modality: ``"image"`` (3-channel grayscale) or ``"depth"`` (1-channel normalised depth).
        timm_kwargs: keyword arguments for ``timm.create_model`` (``in_chans``, ``img_size``, ...).
        weights_filename: file name looked up in ``MODMAP_WEIGHTS_DIR`` and the torch hub cache.
        weights_url: public download location of ``weights_filename``, or ``None`` when
            the weights are produced by this project's pretraining.
        hf_hub_id: Hugging Face Hub repository of timm's copy of the weights, or ``None``.
    """

    name: str
    timm_name: str
    modality: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    weights_filename: str | None = None
    weights_url: str | None = None
    hf_hub_id: str | None = None

    @property
    def env_var(self) -> str:
        """Environment variable that may point at this encoder's weights file."""
        return f"MODMAP_{self.name.upper()}_WEIGHTS"


ENCODER_CONFIGS: dict[str, EncoderConfig] = {
    "dinov2_vitb14_reg4": EncoderConfig(
        name="dinov2_vitb14_reg4",
        timm_name="vit_base_patch14_reg4_dinov2",
        modality="image",
        timm_kwargs={"img_size": 518},
        weights_filename="dinov2_vitb14_reg4_pretrain.pth",
        weights_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
        hf_hub_id="timm/vit_base_patch14_reg4_dinov2.lvd142m",
    ),
    "dinov2_vits14": EncoderConfig(
        name="dinov2_vits14",
        timm_name="vit_small_patch14_dinov2",
        modality="image",
        timm_kwargs={"img_size": 518},
        weights_filename="dinov2_vits14_pretrain.pth",
        weights_url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth",
        hf_hub_id="timm/vit_small_patch14_dinov2.lvd142m",
    ),
    # DINO-Depth: a ViT-S/14 with one input channel, pretrained with DINO on depth maps.
    "dino_depth_vits14": EncoderConfig(
        name="dino_depth_vits14",
        timm_name="vit_small_patch14_dinov2",
        modality="depth",
        timm_kwargs={"in_chans": 1, "img_size": 224},
        weights_filename="dino_depth_vits14.pth",
    ),
}


def get_encoder_config(name: str, modality: str | None = None) -> EncoderConfig:
    """Return the named configuration, or a configuration around any timm ViT name.

    Raises:
        ValueError: when ``name`` is neither a named encoder nor a timm model.
    """
    if name in ENCODER_CONFIGS:
        return ENCODER_CONFIGS[name]
    if name in timm.list_models():
        kwargs = {"in_chans": 1} if modality == "depth" else {}
        return EncoderConfig(name=name, timm_name=name, modality=modality or "image", timm_kwargs=kwargs)
    msg = (
        f"Unknown encoder {name!r}: use one of {sorted(ENCODER_CONFIGS)} or a timm ViT name "
        "such as 'vit_small_patch14_dinov2' (see timm.list_models('vit_*'))."
    )
    raise ValueError(msg)


class ViTEncoder(nn.Module):
    """Frozen timm ViT that maps images to patch tokens.

    Input ``(B, C, H, W)``; output ``(B, N, D)`` patch tokens with ``N = h * w``
    in row-major order over the token grid ``(h, w)``. Class and register tokens
    are dropped. Inputs whose sides are not a multiple of the patch size are
    bilinearly resized to the nearest multiple; position embeddings are
    interpolated to the input's token grid.

    Args:
        model: timm ``VisionTransformer`` created with ``dynamic_img_size=True``.
        num_blocks: number of transformer blocks to run; ``None`` runs all, ``0``
            returns the patch embedding plus position embedding.
        final_norm: apply the model's final LayerNorm to the tokens.
    """

    def __init__(self, model: VisionTransformer, num_blocks: int | None = None, final_norm: bool = True) -> None:
        super().__init__()
        depth = len(model.blocks)
        if num_blocks is not None and not 0 <= num_blocks <= depth:
            msg = f"num_blocks={num_blocks} is invalid for a ViT with {depth} blocks; use 0..{depth} or None for all."
            raise ValueError(msg)
        self.model = model
        self.num_blocks = depth if num_blocks is None else num_blocks
        self.final_norm = final_norm
        self.requires_grad_(False)
        self.eval()

    @property
    def embed_dim(self) -> int:
        """Channel count ``D`` of the output tokens."""
        return int(self.model.embed_dim)

    @property
    def in_chans(self) -> int:
        """Number of input channels."""
        return int(self.model.patch_embed.proj.in_channels)

    @property
    def patch_size(self) -> int:
        """Patch side in pixels."""
        return int(self.model.patch_embed.patch_size[0])

    def train(self, mode: bool = True) -> ViTEncoder:  # noqa: ARG002
        """Keep the frozen encoder in eval mode whatever the parent module's mode."""
        return super().train(False)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """Return the token grid ``(h, w)`` for an input of ``height`` x ``width`` pixels."""
        patch = self.patch_size
        return max(1, round(height / patch)), max(1, round(width / patch))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Encode ``images`` ``(B, C, H, W)`` into patch tokens ``(B, h*w, D)`` and the grid ``(h, w)``."""
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            msg = f"Expected input of shape (B, {self.in_chans}, H, W), got {tuple(images.shape)}."
            raise ValueError(msg)
        grid = self.token_grid(*images.shape[-2:])
        target = (grid[0] * self.patch_size, grid[1] * self.patch_size)
        if tuple(images.shape[-2:]) != target:
            images = F.interpolate(images, size=target, mode="bilinear", align_corners=False)

        model = self.model
        tokens = model.patch_embed(images)
        tokens = model._pos_embed(tokens)  # noqa: SLF001
        tokens = model.patch_drop(tokens)
        tokens = model.norm_pre(tokens)
        for block in model.blocks[: self.num_blocks]:
            tokens = block(tokens)
        if self.final_norm:
            tokens = model.norm(tokens)
        return tokens[:, model.num_prefix_tokens :], grid


def create_encoder(
    name: str,
    weights: str = "pretrained",
    modality: str | None = None,
    num_blocks: int | None = None,
    final_norm: bool = True,
    timm_kwargs: dict[str, Any] | None = None,
) -> tuple[ViTEncoder, dict[str, Any]]:
    """Build a frozen encoder and load its weights.

    Args:
        name: a key of ``ENCODER_CONFIGS`` or a timm ViT name.
        weights: a local file path, ``"pretrained"`` (resolve by the encoder's name)
            or ``"random"`` (timm's initialisation; anomaly scores are then not meaningful).
        modality: ``"image"`` or ``"depth"``; only used for timm names (depth gets ``in_chans=1``).
        num_blocks: transformer blocks to run, see :class:`ViTEncoder`.
        final_norm: apply the final LayerNorm.
        timm_kwargs: overrides of the configuration's ``timm.create_model`` arguments.

    Returns:
        The encoder and the metadata of its weights file (``depth_normalization`` for
        project checkpoints; empty for other sources).
    """
    config = get_encoder_config(name, modality)
    path = resolve_weights(config, weights)
    state_dict: dict[str, torch.Tensor] = {}
    metadata: dict[str, Any] = {}
    if path is not None:
        state_dict, metadata = read_weights_file(path)

    # A project checkpoint records the architecture it was trained with.
    timm_name = metadata.get("timm_name", config.timm_name)
    kwargs = {**config.timm_kwargs, **metadata.get("timm_kwargs", {}), **(timm_kwargs or {})}
    kwargs.update(pretrained=False, num_classes=0, dynamic_img_size=True)
    model = timm.create_model(timm_name, **kwargs)
    if not isinstance(model, VisionTransformer):
        msg = f"Encoder {name!r} is a {type(model).__name__}; only timm VisionTransformer models are supported."
        raise TypeError(msg)

    if path is not None:
        load_encoder_weights(model, state_dict, path)
    return ViTEncoder(model, num_blocks=num_blocks, final_norm=final_norm), metadata
