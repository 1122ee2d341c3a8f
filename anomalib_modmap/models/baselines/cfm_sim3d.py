"""Crossmodal feature mapping (CFM) as configured for SiM3D, built from Modmap's machinery.

CFM maps image features to depth features and back within one view. The SiM3D
configuration uses DINOv2 ViT-B/14 (4 registers) for both modalities, with the
normalised depth map repeated to 3 channels, and multiplies the two distance
maps. Here that is :class:`~anomalib_modmap.models.Modmap` with
``pairing="same_view"`` (no cross-view pairs), ``modulation=False`` and
``aggregation="product"``: the per-view anomaly maps are then fused into an
anomaly volume exactly as Modmap's are.
"""

from __future__ import annotations

from typing import Any

from anomalib.metrics import Evaluator
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor

from anomalib_modmap.models.modmap.lightning_model import Modmap
from anomalib_modmap.models.modmap.anomaly_map import Aggregation


class CfmSim3d(Modmap):
    """Single-view crossmodal feature mapping with DINOv2 ViT-B/14 for image and depth.

    Inputs and outputs are those of :class:`Modmap`: multi-view batches
    ``image`` ``(B, V, 3, H, W)`` and ``depth_map`` ``(B, V, 1, H, W)`` in metres,
    per-view anomaly maps ``(B, V, H, W)`` (product of the two ``1 - cosine``
    distances, so in [0, 4]), ``pred_volume`` and ``pred_score``. Pairing and
    modulation are fixed (``"same_view"``, off); every other argument has
    Modmap's meaning. ``depth_encoder`` defaults to the image encoder's
    architecture and ``depth_weights`` to its weights, because the configuration
    uses the RGB-pretrained DINOv2 on the 3-channel depth map.

    Args:
        image_encoder: named encoder or timm ViT name for grayscale images.
        depth_encoder: encoder for the depth map; a 3-channel encoder receives the
            normalised depth repeated to 3 channels.
        image_weights, depth_weights: a file, ``"pretrained"`` or ``"random"``.
        aggregation: combination of the two directions; ``product`` for this configuration.
        Other arguments: see :class:`Modmap`.
    """

    def __init__(
        self,
        image_encoder: str = "dinov2_vitb14_reg4",
        depth_encoder: str = "dinov2_vitb14_reg4",
        image_weights: str = "pretrained",
        depth_weights: str = "pretrained",
        image_encoder_kwargs: dict[str, Any] | None = None,
        depth_encoder_kwargs: dict[str, Any] | None = None,
        image_num_blocks: int | None = None,
        depth_num_blocks: int | None = None,
        final_norm: bool = True,
        depth_normalization: str | None = None,
        aggregation: Aggregation = "product",
        max_epochs: int = 200,
        pair_batch_size: int = 48,
        learning_rate: float = 1e-4,
        max_learning_rate: float = 5e-4,
        warmup_fraction: float = 0.1,
        seed: int = 0,
        views: list[int] | None = None,
        save_volumes: bool = True,
        bf16: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: bool = False,
    ) -> None:
        super().__init__(
            image_encoder=image_encoder,
            depth_encoder=depth_encoder,
            image_weights=image_weights,
            depth_weights=depth_weights,
            image_encoder_kwargs=image_encoder_kwargs,
            depth_encoder_kwargs=depth_encoder_kwargs,
            image_num_blocks=image_num_blocks,
            depth_num_blocks=depth_num_blocks,
            final_norm=final_norm,
            depth_normalization=depth_normalization,
            aggregation=aggregation,
            max_epochs=max_epochs,
            pair_batch_size=pair_batch_size,
            learning_rate=learning_rate,
            max_learning_rate=max_learning_rate,
            warmup_fraction=warmup_fraction,
            seed=seed,
            views=views,
            save_volumes=save_volumes,
            bf16=bf16,
            pairing="same_view",
            modulation=False,
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
