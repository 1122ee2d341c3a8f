"""Modmap as an anomalib model: training on one nominal instance, anomaly maps and volumes at test time.

Batches are multi-view batches (``sim3d_datamodule.items.MultiViewBatch``):
``image`` ``(B, V, 3, H, W)``, ``depth_map`` ``(B, V, 1, H, W)`` metres,
``valid_depth``, ``intrinsics``, ``world_to_camera``, ``view_index`` ``(B, V)``,
``instance`` and ``gt_volume`` per instance.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anomalib import LearningType
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from torch.optim.lr_scheduler import OneCycleLR

from anomalib_modmap.backbones import create_encoder

from .anomaly_map import AGGREGATIONS, Aggregation
from .torch_model import ModmapModel, Pairing, ViewFeatures

if TYPE_CHECKING:
    from lightning.pytorch.utilities.types import STEP_OUTPUT

logger = logging.getLogger(__name__)

_ENCODER_PREFIXES = ("model.image_encoder.", "model.depth_encoder.")
# Percentile of the training instances' foreground pixel scores that sets the top of the overlay colour scale.
OVERLAY_SCORE_PERCENTILE = 99.9
# Constructor arguments that fix the encoders' features or the mappers' shapes: a checkpoint's mapper weights
# only fit a model built with the same values.
_ARCHITECTURE_ARGUMENTS = (
    "image_encoder",
    "depth_encoder",
    "image_encoder_kwargs",
    "depth_encoder_kwargs",
    "image_num_blocks",
    "depth_num_blocks",
    "final_norm",
    "max_views",
)


class Modmap(AnomalibModule):
    """Cross-view crossmodal feature mapping (ModMap) for multi-view RGB-D anomaly detection.

    Training extracts the frozen image and depth features of every view of the
    nominal training instance once, then fits view modulators and the
    image<->depth mappers on all ordered (source, target) view pairs. Testing
    maps every pair of views of an instance and takes the per-target minimum
    over source views. The outputs are per-view anomaly maps ``(B, V, H, W)``,
    an anomaly volume per instance (``pred_volume``, one score per voxel of
    ``gt_volume``) and an instance score ``pred_score``. The instance score is
    the maximum voxel score, or the maximum of the anomaly maps when the
    instance has no voxel grid.

    Args:
        image_encoder: named encoder or timm ViT name for grayscale images.
        depth_encoder: named encoder or timm ViT name for depth maps.
        image_weights: local file, ``"pretrained"`` (resolve by the encoder's name) or ``"random"``.
        depth_weights: as ``image_weights`` for the depth encoder.
        image_encoder_kwargs: ``timm.create_model`` overrides for the image encoder (e.g. ``depth``).
        depth_encoder_kwargs: the same for the depth encoder.
        image_num_blocks: transformer blocks of the image encoder to run; ``None`` runs all.
        depth_num_blocks: the same for the depth encoder.
        final_norm: apply the encoders' final LayerNorm to the tokens.
        depth_normalization: ``"max"`` or ``"minmax"``; ``None`` takes the value stored in a
            project depth-encoder checkpoint, else ``"max"``.
        aggregation: combination of the image->depth and depth->image distances
            (``max``, ``min``, ``product``, ``mean``).
        max_views: one-hot size of the view modulators; view indices must be below it.
        max_epochs: training epochs; each visits every ordered view pair once.
        pair_batch_size: view pairs per optimiser step and per inference batch.
        learning_rate: Adam learning rate at the start of the one-cycle schedule.
        max_learning_rate: peak learning rate of the one-cycle schedule.
        warmup_fraction: share of the steps spent rising to ``max_learning_rate``.
        seed: seed of the mappers' initialisation, of random encoders and of the pair order.
        views: view indices to use at test time (a subset trades accuracy for time); ``None`` uses all.
        save_volumes: write anomaly volumes (``.npz``, ``.ply``) and per-view overlay PNGs
            under ``<trainer.default_root_dir>/volumes/<instance>/`` during testing.
        bf16: run encoders and mappers under bf16 autocast on CUDA; CPU always runs float32.
        pairing: ``"all"`` (every ordered view pair, the ModMap method) or ``"same_view"``
            (each view mapped onto itself only, for training and testing).
        modulation: apply the view modulators; ``False`` maps the frozen tokens unchanged.
        pre_processor, post_processor, evaluator, visualizer: anomalib components, see
            :class:`anomalib.models.components.AnomalibModule`.
    """

    def __init__(
        self,
        image_encoder: str = "dinov2_vitb14_reg4",
        depth_encoder: str = "dino_depth_vits14",
        image_weights: str = "pretrained",
        depth_weights: str = "pretrained",
        image_encoder_kwargs: dict[str, Any] | None = None,
        depth_encoder_kwargs: dict[str, Any] | None = None,
        image_num_blocks: int | None = None,
        depth_num_blocks: int | None = None,
        final_norm: bool = True,
        depth_normalization: str | None = None,
        aggregation: Aggregation = "max",
        max_views: int = 64,
        max_epochs: int = 200,
        pair_batch_size: int = 48,
        learning_rate: float = 1e-4,
        max_learning_rate: float = 5e-4,
        warmup_fraction: float = 0.1,
        seed: int = 0,
        views: list[int] | None = None,
        save_volumes: bool = True,
        bf16: bool = True,
        pairing: Pairing = "all",
        modulation: bool = True,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: bool = False,
    ) -> None:
        super().__init__(pre_processor=pre_processor, post_processor=post_processor, evaluator=evaluator, visualizer=visualizer)
        if aggregation not in AGGREGATIONS:
            msg = f"Unknown aggregation {aggregation!r}; choose one of {AGGREGATIONS}."
            raise ValueError(msg)
        if max_learning_rate < learning_rate:
            msg = f"max_learning_rate={max_learning_rate} must be at least learning_rate={learning_rate}."
            raise ValueError(msg)

        # Seed random encoders and the mappers so that a run (and a checkpoint reload) is reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, _ = create_encoder(
                image_encoder,
                weights=image_weights,
                modality="image",
                num_blocks=image_num_blocks,
                final_norm=final_norm,
                timm_kwargs=image_encoder_kwargs,
            )
            depth, depth_metadata = create_encoder(
                depth_encoder,
                weights=depth_weights,
                modality="depth",
                num_blocks=depth_num_blocks,
                final_norm=final_norm,
                timm_kwargs=depth_encoder_kwargs,
            )
            stored_normalization = depth_metadata.get("depth_normalization")
            if depth_normalization is not None and stored_normalization not in (None, depth_normalization):
                logger.warning(
                    "depth_normalization=%r differs from %r stored with the depth encoder's weights; using %r.",
                    depth_normalization,
                    stored_normalization,
                    depth_normalization,
                )
            self.model = ModmapModel(
                image,
                depth,
                depth_normalization=depth_normalization or stored_normalization or "max",
                max_views=max_views,
                aggregation=aggregation,
                pair_batch_size=pair_batch_size,
                pairing=pairing,
                modulation=modulation,
            )

        self.max_epochs = max_epochs
        self.pair_batch_size = pair_batch_size
        self.learning_rate = learning_rate
        self.max_learning_rate = max_learning_rate
        self.warmup_fraction = warmup_fraction
        self.seed = seed
        self.views = None if views is None else [int(view) for view in views]
        self.save_volumes = save_volumes
        self.bf16 = bf16
        self.automatic_optimization = False

        self._feature_cache: dict[tuple[str, tuple[int, ...]], ViewFeatures] = {}
        self._scheduler: OneCycleLR | None = None
        self._scheduler_state: dict[str, Any] | None = None
        # Colour scale (low, high) shared by every exported overlay and point cloud; see _training_score_range.
        self.overlay_score_range: tuple[float, float] | None = None
        self._overlay_range_step: int | None = None

    # anomalib component defaults ------------------------------------------------------------

    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Return a pre-processor without transforms.

        The SiM3D datamodule already pads, resizes and normalises every view, and
        a per-image transform would not fit ``(B, V, C, H, W)`` batches.
        """
        del image_size
        return PreProcessor(transform=None)

    def configure_post_processor(self) -> PostProcessor:
        """Return a post-processor that keeps raw scores.

        anomalib's default normalisation and thresholding read image-shaped fields
        and need validation statistics that a one-instance training set cannot give.
        """
        # NOTE: without thresholding, batches carry no pred_label or pred_mask.
        return PostProcessor(enable_normalization=False, enable_thresholding=False)

    @staticmethod
    def configure_evaluator() -> Evaluator:
        """Return an evaluator with V-AUPRO@1% and I-AUROC on the test set."""
        from anomalib_modmap.metrics import InstanceAUROC, VoxelAUPRO

        return Evaluator(test_metrics=[VoxelAUPRO(fpr_limit=0.01), InstanceAUROC()])

    @classmethod
    def configure_visualizer(cls) -> None:
        """Return no image visualizer: overlays are written per view with the anomaly volumes."""
        return

    @property
    def learning_type(self) -> LearningType:
        """One-class: trained on nominal data only."""
        return LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Trainer settings: ``max_epochs`` from the model and no validation loop.

        Modmap needs no validation statistics (its post-processor keeps raw
        scores), and SiM3D's validation set is its test set, so validating
        would only repeat the test pass.
        """
        return {
            "max_epochs": self.max_epochs,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
        }

    # training -------------------------------------------------------------------------------

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Return Adam over the modulators and mappers.

        The one-cycle schedule (cosine annealing from ``learning_rate`` up to
        ``max_learning_rate`` after ``warmup_fraction`` of the steps) is created at
        the first training step, once the number of views, and so the number of
        optimiser steps per epoch, is known.
        """
        parameters = [parameter for name, parameter in self.model.named_parameters() if not name.startswith(("image_encoder.", "depth_encoder."))]
        return torch.optim.Adam(parameters, lr=self.learning_rate)

    def _build_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_batch: int) -> OneCycleLR:
        batches = max(1, int(self.trainer.num_training_batches)) if math.isfinite(self.trainer.num_training_batches) else 1
        # OneCycleLR divides by the length of each phase, so both need more than one
        # step. Short runs (a few views, few epochs) get a longer schedule than they
        # use and a warm-up of at least 1.5 steps; the schedule then stops unfinished.
        total_steps = max(4, int(self.trainer.max_epochs or self.max_epochs) * batches * steps_per_batch)
        scheduler = OneCycleLR(
            optimizer,
            max_lr=self.max_learning_rate,
            total_steps=total_steps,
            pct_start=max(self.warmup_fraction, 1.5 / total_steps),
            anneal_strategy="cos",
            div_factor=self.max_learning_rate / self.learning_rate,
        )
        if self._scheduler_state is not None:
            scheduler.load_state_dict(self._scheduler_state)
            self._scheduler_state = None
        return scheduler

    def on_fit_start(self) -> None:
        """Drop features cached by an earlier fit."""
        self._feature_cache.clear()

    def on_train_end(self) -> None:
        """Fix the overlay colour scale from the trained mappers' scores on the training instances."""
        self._update_overlay_score_range()

    def _update_overlay_score_range(self) -> None:
        """Set ``overlay_score_range`` to ``(0, p)``, ``p`` the 99.9th percentile of the training instances' scores.

        The scores are the anomaly maps of the cached training instances over their
        foreground pixels. Exports then share one colour scale across instances,
        so a nominal instance shows red only where it scores above nearly every
        training pixel. Nothing changes when no training features are cached.
        """
        if not self._feature_cache or self._overlay_range_step == self.global_step:
            return
        scores = []
        with torch.no_grad():
            for features in self._feature_cache.values():
                with self._autocast():
                    maps = self.model.anomaly_maps(features).float()
                scores.append(maps[features.foreground.to(maps.device)].cpu().numpy())
        values = np.concatenate(scores) if scores else np.empty(0)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        high = float(np.percentile(values, OVERLAY_SCORE_PERCENTILE))
        self.overlay_score_range = (0.0, high if high > 0 else 1.0)
        self._overlay_range_step = self.global_step

    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:  # noqa: ANN401
        """Run one epoch's share of view pairs for every instance of ``batch``.

        Features of each training instance are extracted at its first visit and
        cached, because the encoders are frozen and the instance does not change.
        Each instance's view pairs (all ordered pairs, self-pairs included, or
        only self-pairs with ``pairing="same_view"``) are shuffled
        (seeded by ``seed`` and the epoch) and fed in batches of ``pair_batch_size``,
        one optimiser step each.
        """
        del batch_idx
        optimizer = self.optimizers()
        features_per_instance = [self._cached_features(batch, index) for index in range(_batch_size(batch))]
        pairs_per_instance = [self.model.view_pairs(features.image.shape[0], self.device) for features in features_per_instance]
        pair_count = sum(pairs.shape[0] for pairs in pairs_per_instance)
        if self._scheduler is None:
            self._scheduler = self._build_scheduler(optimizer.optimizer, math.ceil(pair_count / self.pair_batch_size))

        # NOTE: under DDP every rank draws the same pair order for its copy of the
        # training instance, so extra GPUs add no training throughput.
        generator = torch.Generator().manual_seed(self.seed + self.current_epoch)
        losses = []
        for features, pairs in zip(features_per_instance, pairs_per_instance, strict=True):
            order = torch.randperm(pairs.shape[0], generator=generator).to(self.device)
            for chunk in order.split(self.pair_batch_size):
                source, target = pairs[chunk].unbind(dim=1)
                with self._autocast():
                    loss = self.model.pair_loss(features, source, target)
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()
                if self._scheduler.last_epoch < self._scheduler.total_steps:
                    self._scheduler.step()
                losses.append(loss.detach())

        mean_loss = torch.stack(losses).mean()
        self.log("train_loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(features_per_instance))
        self.log("learning_rate", optimizer.param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=1)
        return {"loss": mean_loss}

    def _cached_features(self, batch: Any, index: int) -> ViewFeatures:  # noqa: ANN401
        views = batch.view_index[index]
        key = (_instance_name(batch, index), tuple(int(view) for view in views))
        if key not in self._feature_cache:
            self._feature_cache[key] = self._extract(batch, index)
        return self._feature_cache[key]

    # inference ------------------------------------------------------------------------------

    def validation_step(self, batch: Any, *args: Any, **kwargs: Any) -> STEP_OUTPUT:  # noqa: ANN401
        """Compute anomaly maps, volumes and instance scores of a validation batch."""
        del args, kwargs
        return self._predict_batch(batch, save=False)

    def test_step(self, batch: Any, *args: Any, **kwargs: Any) -> STEP_OUTPUT:  # noqa: ANN401
        """Compute anomaly maps, volumes and instance scores, and write volumes and overlays."""
        del args, kwargs
        return self._predict_batch(batch, save=self.save_volumes)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> STEP_OUTPUT:  # noqa: ANN401
        """Compute anomaly maps, volumes and instance scores of a prediction batch."""
        del batch_idx, dataloader_idx
        return self._predict_batch(batch, save=self.save_volumes)

    def _predict_batch(self, batch: Any, save: bool) -> Any:  # noqa: ANN401
        anomaly_maps, scores, volumes = [], [], []
        gt_volumes = getattr(batch, "gt_volume", None)
        for index in range(_batch_size(batch)):
            positions = self._view_positions(batch, index)
            features = self._extract(batch, index, positions)
            with self._autocast():
                maps = self.model.anomaly_maps(features).float()

            full_maps = torch.zeros(batch.image.shape[1], *maps.shape[-2:], device=maps.device)
            full_maps[positions] = maps
            anomaly_maps.append(full_maps)

            grid = None if gt_volumes is None else gt_volumes[index]
            if grid is None:
                volumes.append(None)
                scores.append(maps.max())
                continue
            volume = self._fuse_volume(batch, index, positions, maps, features, grid)
            volumes.append(volume.scores)
            scores.append(volume.scores.max() if volume.scores.numel() else maps.max())
            if save:
                self._export(batch, index, positions, maps, features, volume)

        pred_volume = volumes if all(volume is not None for volume in volumes) else None
        return batch.update(anomaly_map=torch.stack(anomaly_maps), pred_score=torch.stack(scores).float(), pred_volume=pred_volume)

    def _view_positions(self, batch: Any, index: int) -> torch.Tensor:  # noqa: ANN401
        views = batch.view_index[index].to(self.device)
        if self.views is None:
            return torch.arange(views.shape[0], device=self.device)
        available = views.tolist()
        missing = [view for view in self.views if view not in available]
        if missing:
            msg = (
                f"Requested view indices {missing} (of views={self.views}) do not exist in instance "
                f"'{_instance_name(batch, index)}', whose view indices are {available}. Remove them from --model.views."
            )
            raise ValueError(msg)
        keep = torch.isin(views, torch.tensor(self.views, device=self.device))
        return keep.nonzero()[:, 0]

    def _extract(self, batch: Any, index: int, positions: torch.Tensor | None = None) -> ViewFeatures:  # noqa: ANN401
        select = slice(None) if positions is None else positions
        with self._autocast():
            return self.model.extract_features(
                batch.image[index][select],
                batch.depth_map[index][select],
                batch.valid_depth[index][select],
                batch.view_index[index][select].to(self.device),
            )

    def _fuse_volume(self, batch: Any, index: int, positions: torch.Tensor, maps: torch.Tensor, features: ViewFeatures, grid: Any) -> Any:  # noqa: ANN401
        from anomalib_modmap.volume import AnomalyVolume

        return AnomalyVolume.from_views(
            maps,
            batch.depth_map[index][positions][:, 0],
            features.foreground,
            batch.intrinsics[index][positions],
            batch.world_to_camera[index][positions],
            grid.to(maps.device),
            instance=_instance_name(batch, index),
        )

    def _export(self, batch: Any, index: int, positions: torch.Tensor, maps: torch.Tensor, features: ViewFeatures, volume: Any) -> None:  # noqa: ANN401
        from anomalib_modmap.volume import export_anomaly_volume

        folder = Path(self.trainer.default_root_dir) / "volumes" / _instance_name(batch, index)
        export_anomaly_volume(
            folder,
            volume,
            images=batch.image[index][positions].cpu(),
            anomaly_maps=maps.cpu(),
            valid=features.foreground.cpu(),
            view_names=_view_names(batch, index, positions),
            score_range=self.overlay_score_range,
        )

    def _autocast(self) -> torch.autocast:
        # NOTE: the bf16 path has not been compared with float32 on a GPU yet; pass bf16=False to rule it out.
        enabled = self.bf16 and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # checkpoints ----------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen encoders out of the checkpoint and store the one-cycle schedule's state.

        The encoders are rebuilt from their weights source (or, for ``random``,
        from ``seed``) whenever the model is constructed, so storing them again
        would only add hundreds of megabytes. A checksum of each encoder is kept
        to detect a weights file that changed between saving and loading.
        """
        super().on_save_checkpoint(checkpoint)
        state_dict = checkpoint.get("state_dict", {})
        for key in [key for key in state_dict if key.startswith(_ENCODER_PREFIXES)]:
            del state_dict[key]
        checkpoint["modmap_encoder_checksums"] = self._encoder_checksums()
        self._update_overlay_score_range()
        if self.overlay_score_range is not None:
            checkpoint["modmap_overlay_score_range"] = list(self.overlay_score_range)
        if self._scheduler is not None:
            checkpoint["modmap_scheduler"] = self._scheduler.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the architecture arguments, put the freshly built encoders into the checkpoint's state and restore the schedule.

        Raises:
            ValueError: if an argument that shapes the encoders or mappers differs
                from the one the checkpoint was trained with.
        """
        super().on_load_checkpoint(checkpoint)
        self._check_architecture_arguments(checkpoint)
        state_dict = checkpoint.setdefault("state_dict", {})
        for key, value in self.state_dict().items():
            if key.startswith(_ENCODER_PREFIXES) and key not in state_dict:
                state_dict[key] = value
        saved = checkpoint.get("modmap_encoder_checksums")
        current = self._encoder_checksums()
        if saved is not None and saved != current:
            logger.warning(
                "The encoder weights differ from those the checkpoint was trained with (checksums %s, now %s); "
                "anomaly scores may not match. Point image_weights/depth_weights at the original files.",
                saved,
                current,
            )
        self._scheduler_state = checkpoint.get("modmap_scheduler")
        stored_range = checkpoint.get("modmap_overlay_score_range")
        self.overlay_score_range = None if stored_range is None else (float(stored_range[0]), float(stored_range[1]))

    def _check_architecture_arguments(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters") or {}
        differing = [
            name
            for name in _ARCHITECTURE_ARGUMENTS
            if name in saved and name in self.hparams and saved[name] != self.hparams[name]
        ]
        if not differing:
            return
        trained = ", ".join(f"{name}={saved[name]!r}" for name in differing)
        current = ", ".join(f"{name}={self.hparams[name]!r}" for name in differing)
        flags = " ".join(f"--model.{name} {_flag_value(saved[name])}" for name in differing)
        msg = (
            f"The checkpoint was trained with {trained}, but this model was built with {current}. "
            f"Build the model with the training arguments: pass {flags} (anomalib test and predict need the same "
            "model arguments as training)."
        )
        raise ValueError(msg)

    def _encoder_checksums(self) -> dict[str, float]:
        """Return the float64 sum of every encoder's parameters, rounded to 6 significant digits."""
        checksums = {}
        for name in ("image_encoder", "depth_encoder"):
            encoder = getattr(self.model, name)
            total = sum(float(tensor.double().sum()) for tensor in encoder.state_dict().values())
            checksums[name] = float(f"{total:.6g}")
        return checksums


def _flag_value(value: Any) -> str:  # noqa: ANN401
    """Format ``value`` as a shell word for an anomalib CLI flag (JSON for lists, dicts and None)."""
    if isinstance(value, str):
        return value
    return shlex.quote(json.dumps(value))


def _batch_size(batch: Any) -> int:  # noqa: ANN401
    return int(batch.image.shape[0])


def _view_names(batch: Any, index: int, positions: torch.Tensor) -> list[str]:  # noqa: ANN401
    names = getattr(batch, "view_names", None)
    if names is not None:
        return [str(names[index][position]) for position in positions.tolist()]
    return [f"view_{int(view):03d}" for view in batch.view_index[index][positions]]


def _instance_name(batch: Any, index: int) -> str:  # noqa: ANN401
    names = getattr(batch, "instance", None)
    if names is None:
        return f"instance_{index:03d}"
    return str(names if isinstance(names, str) else names[index])
