"""Weight resolution and loading for the ViT encoders.

Three file formats are accepted and distinguished by their keys:

- timm state_dicts (``.pth``/``.pt``/``.safetensors``, optionally nested under
  ``"model"`` or ``"state_dict"``);
- the official DINOv2 release files (``dinov2_vitb14_reg4_pretrain.pth`` and
  siblings), recognised by their ``mask_token`` entry and re-keyed to timm;
- this project's encoder checkpoints (``"format": "anomalib-modmap-encoder/1"``),
  written by the pretraining tools.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from timm.layers import resample_abs_pos_embed

from anomalib_modmap.encoder_checkpoint import ENCODER_FORMAT, parse_encoder_checkpoint

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer

    from .vision_transformer import EncoderConfig

logger = logging.getLogger(__name__)

ENCODER_CHECKPOINT_FORMAT = ENCODER_FORMAT
WEIGHTS_DIR_ENV = "MODMAP_WEIGHTS_DIR"
ALLOW_DOWNLOAD_ENV = "MODMAP_ALLOW_DOWNLOAD"


class EncoderWeightsError(RuntimeError):
    """Raised when an encoder's weights cannot be found or do not fit the architecture."""


def resolve_weights(config: EncoderConfig, weights: str | os.PathLike) -> Path | None:
    """Return the weights file for ``config``, or ``None`` for random initialisation.

    ``weights`` is a file path, ``"pretrained"`` or ``"random"``. ``"pretrained"``
    looks, in order, at the file named by the encoder's own environment variable
    (``MODMAP_<NAME>_WEIGHTS``), at ``$MODMAP_WEIGHTS_DIR/<weights file name>``,
    at the torch hub checkpoint cache, and at the Hugging Face Hub cache. It
    downloads through the Hugging Face Hub only when ``MODMAP_ALLOW_DOWNLOAD=1``.

    Raises:
        EncoderWeightsError: when no file is found; the message names the file,
            where to download it and where to put it.
    """
    if str(weights) == "random":
        warnings.warn(
            f"Encoder {config.name!r} uses random weights: anomaly scores are not meaningful. "
            "Use weights='pretrained' or a weights file for real inspections.",
            UserWarning,
            stacklevel=3,
        )
        return None
    if str(weights) != "pretrained":
        path = Path(weights).expanduser()
        if path.is_dir():
            msg = f"Weights for encoder {config.name!r} must be a file, but {path} is a folder. Pass the weights file inside it."
            raise EncoderWeightsError(msg)
        if not path.is_file():
            msg = f"Weights file for encoder {config.name!r} not found: {path}."
            if not path.suffix and len(path.parts) == 1:
                msg += " To select weights by keyword, use 'pretrained' or 'random'."
            raise EncoderWeightsError(msg)
        return path
    return _find_pretrained(config)


def _find_pretrained(config: EncoderConfig) -> Path:
    filename = config.weights_filename or f"{config.name}.pth"
    candidates: list[Path] = []

    env_path = os.environ.get(config.env_var)
    if env_path:
        path = Path(env_path).expanduser()
        if not path.is_file():
            msg = f"{config.env_var} points at {path}, which is not a file."
            raise EncoderWeightsError(msg)
        return path

    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        candidates += [Path(weights_dir).expanduser() / filename, Path(weights_dir).expanduser() / f"{config.name}.pth"]
    candidates.append(Path(torch.hub.get_dir()) / "checkpoints" / filename)
    for candidate in candidates:
        if candidate.is_file():
            logger.info("Encoder %s: loading weights from %s", config.name, candidate)
            return candidate

    # timm's Hub copies are 3-channel image weights: a 1-channel encoder never falls back to them.
    hf_hub_id = config.hf_hub_id
    if hf_hub_id is None and config.timm_kwargs.get("in_chans", 3) == 3:
        hf_hub_id = _timm_hf_hub_id(config.timm_name)
    if hf_hub_id:
        cached = _hf_cached_file(hf_hub_id)
        if cached is not None:
            return cached
        if os.environ.get(ALLOW_DOWNLOAD_ENV) == "1":
            from huggingface_hub import hf_hub_download

            logger.info("Encoder %s: downloading %s from the Hugging Face Hub", config.name, hf_hub_id)
            return Path(hf_hub_download(hf_hub_id, "model.safetensors"))

    raise EncoderWeightsError(_missing_weights_message(config, filename, candidates, hf_hub_id))


def _missing_weights_message(config: EncoderConfig, filename: str, searched: list[Path], hf_hub_id: str | None) -> str:
    lines = [f"Pretrained weights for encoder {config.name!r} ({config.timm_name}) not found: {filename}."]
    lines.append("Searched: " + ", ".join(str(path) for path in searched) + (f", Hugging Face cache of {hf_hub_id}" if hf_hub_id else ""))
    if config.weights_url:
        lines.append(f"Download {config.weights_url}")
    elif config.modality == "depth":
        lines.append("Train it with `modmap pretrain-depth --data DEPTH_FOLDER --out dino_depth_vits14.pth`,")
    destination = f"${WEIGHTS_DIR_ENV}/{filename}" if os.environ.get(WEIGHTS_DIR_ENV) else f"a folder named by {WEIGHTS_DIR_ENV} (as {filename})"
    lines.append(f"and put it in {destination}, or point {config.env_var} at the file, or pass its path as the weights argument.")
    if hf_hub_id:
        lines.append(f"With network access, set {ALLOW_DOWNLOAD_ENV}=1 to download {hf_hub_id} from the Hugging Face Hub.")
    lines.append("weights='random' runs without pretrained weights, but its anomaly scores are not meaningful.")
    return "\n".join(lines)


def _timm_hf_hub_id(timm_name: str) -> str | None:
    try:
        from timm.models import get_pretrained_cfg

        pretrained_cfg = get_pretrained_cfg(timm_name)
    except (RuntimeError, ValueError):
        return None
    return getattr(pretrained_cfg, "hf_hub_id", None) if pretrained_cfg is not None else None


def _hf_cached_file(hf_hub_id: str) -> Path | None:
    """Return the cached ``model.safetensors`` of a Hub repository without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(hf_hub_id, "model.safetensors")
    return Path(cached) if isinstance(cached, str) else None


def read_weights_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a weights file and return a timm-keyed state_dict and its metadata.

    Metadata contains ``modality``, ``timm_name``, ``timm_kwargs`` and
    ``depth_normalization`` for project checkpoints and is empty otherwise.
    """
    # Corrupt or foreign files fail inside safetensors or the unpickler with many exception types
    # (struct.error, UnpicklingError, SafetensorError, ...), none of which name the file.
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), {}
        except Exception as error:  # noqa: BLE001
            raise EncoderWeightsError(_unreadable_weights_message(path, error)) from error
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise EncoderWeightsError(_unreadable_weights_message(path, error)) from error
    if not isinstance(content, dict):
        msg = f"Encoder weights {path} hold a {type(content).__name__}, expected a state_dict or checkpoint dict."
        raise EncoderWeightsError(msg)

    if "format" in content:
        try:
            checkpoint = parse_encoder_checkpoint(content, str(path))
        except ValueError as error:
            raise EncoderWeightsError(str(error)) from error
        metadata = {"modality": checkpoint.modality, "timm_name": checkpoint.timm_name, "timm_kwargs": checkpoint.timm_kwargs}
        if checkpoint.depth_normalization is not None:
            metadata["depth_normalization"] = checkpoint.depth_normalization
        return dict(checkpoint.state_dict), metadata

    for key in ("model", "state_dict"):
        if key in content and isinstance(content[key], dict):
            content = content[key]
    state_dict = {key: value for key, value in content.items() if isinstance(value, torch.Tensor)}
    if "mask_token" in state_dict:
        state_dict = convert_dinov2_state_dict(state_dict)
    return state_dict, {}


def _unreadable_weights_message(path: Path, error: Exception) -> str:
    return (
        f"Failed to read encoder weights {path} ({type(error).__name__}: {error}). "
        "The file is truncated, corrupt or not a torch/safetensors weights file; download or export it again."
    )


def convert_dinov2_state_dict(state_dict: dict[str, torch.Tensor], no_embed_class: bool | None = None) -> dict[str, torch.Tensor]:
    """Re-key an official DINOv2 state_dict for the matching timm ViT.

    The official files carry a ``mask_token`` (used only by masked-image
    training, dropped here), store register tokens as ``register_tokens``
    (timm: ``reg_token``), name the SwiGLU projections ``w12``/``w3`` (timm:
    ``fc1``/``fc2``) and may group blocks into chunks (``blocks.<chunk>.<index>``).
    With registers, timm's DINOv2 models keep class and register tokens out of
    the position embedding, so the class token's position entry is folded into
    ``cls_token`` and dropped from ``pos_embed``. ``no_embed_class`` forces or
    skips that fold; by default it follows the presence of ``register_tokens``.
    LayerScale parameters are ``ls1.gamma``/``ls2.gamma`` in both.
    """
    source = dict(state_dict)
    source.pop("mask_token", None)
    converted: dict[str, torch.Tensor] = {}

    if no_embed_class is None:
        no_embed_class = "register_tokens" in source
    if "register_tokens" in source:
        converted["reg_token"] = source.pop("register_tokens")
    if no_embed_class and "pos_embed" in source:
        pos_embed = source.pop("pos_embed")
        converted["cls_token"] = source.pop("cls_token") + pos_embed[:, :1]
        converted["pos_embed"] = pos_embed[:, 1:]

    chunked = re.compile(r"^blocks\.\d+\.(\d+)\.")
    for key, value in source.items():
        key = chunked.sub(r"blocks.\1.", key)
        key = re.sub(r"\.mlp\.w12\.", ".mlp.fc1.", key)
        key = re.sub(r"\.mlp\.w3\.", ".mlp.fc2.", key)
        converted[key] = value
    return converted


def load_encoder_weights(model: VisionTransformer, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Load a timm-keyed ``state_dict`` read from ``path`` into ``model``.

    The position embedding is resampled (bicubic) when the file was trained on
    another token grid. A classifier head in the file is ignored because the
    encoders have none.

    Raises:
        EncoderWeightsError: when keys or shapes do not match the architecture.
    """
    expected = model.state_dict()
    state_dict = {key: value for key, value in state_dict.items() if not key.startswith("head.") or key in expected}

    if "pos_embed" in state_dict and "pos_embed" in expected and state_dict["pos_embed"].shape != expected["pos_embed"].shape:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        state_dict["pos_embed"] = resample_abs_pos_embed(
            state_dict["pos_embed"],
            new_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=prefix,
        )

    mismatched = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key in expected and value.shape != expected[key].shape
    ]
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if mismatched or missing or unexpected:
        details = "; ".join(
            part
            for part in (
                f"shape mismatch: {', '.join(mismatched[:5])}" if mismatched else "",
                f"missing keys: {', '.join(missing[:5])}" if missing else "",
                f"unexpected keys: {', '.join(unexpected[:5])}" if unexpected else "",
            )
            if part
        )
        msg = f"Encoder weights {path} do not fit the architecture ({type(model).__name__}, embed_dim={model.embed_dim}): {details}."
        raise EncoderWeightsError(msg)

    model.load_state_dict(state_dict, strict=True)
