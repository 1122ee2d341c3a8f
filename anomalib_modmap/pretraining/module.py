"""Lightning module for DINOv2-style self-supervised pretraining of a ViT encoder."""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from lightning.pytorch import LightningModule
from torch import nn

from anomalib_modmap.encoder_checkpoint import save_encoder_checkpoint

from .dino_loss import DINOLoss, sinkhorn_knopp
from .heads import DINOHead
from .ibot_loss import IBOTPatchLoss
from .koleo_loss import KoLeoLoss
from .schedules import ScheduleValues, cosine, warmup_cosine

# Parameters that take no weight decay besides biases and norm weights (all 1-D).
_NO_DECAY_NAMES = ("cls_token", "reg_token", "pos_embed", "mask_token")


@dataclass
class PretrainConfig:
    """Settings of one pretraining run (defaults: DINOv2's ViT-S/14 recipe).

    Encoder: ``timm_name`` built with ``in_chans``, ``img_size`` (the global crop size),
    ``dynamic_img_size=True``, ``reg_tokens`` register tokens when above 0, and
    ``model_overrides`` (for example ``embed_dim``, ``depth``, ``num_heads`` for a small encoder).
    Steps: the schedules run over ``max_steps`` optimisation steps; fractions are of ``max_steps``.
    ``lr`` is the peak learning rate; when ``None`` it is ``base_lr * sqrt(global batch / 1024)``.
    Temperatures are softmax temperatures; the teacher's rises linearly over its warm-up.
    ``drop_path_rate`` applies to the student only (DINOv2's default config uses 0.3 for ViT-L).
    """

    modality: str = "depth"
    depth_normalization: str | None = "max"
    timm_name: str = "vit_small_patch14_dinov2"
    in_chans: int = 1
    img_size: int = 224
    reg_tokens: int = 0
    model_overrides: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float = 0.1

    head_prototypes: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    ibot_separate_head: bool = True

    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    student_temperature: float = 0.1
    teacher_temperature: tuple[float, float] = (0.04, 0.07)
    teacher_temperature_warmup: float = 0.3
    sinkhorn_iterations: int = 3

    max_steps: int = 10000
    lr: float | None = None
    base_lr: float = 0.004
    min_lr: float = 1e-6
    warmup: float = 0.1
    weight_decay: tuple[float, float] = (0.04, 0.4)
    teacher_momentum: tuple[float, float] = (0.992, 1.0)
    layer_decay: float = 0.9
    patch_embed_lr_scale: float = 0.2
    freeze_last_layer: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)

    def timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``timm.create_model`` that rebuild the encoder at inference."""
        kwargs: dict[str, Any] = {"in_chans": self.in_chans, "img_size": self.img_size, "dynamic_img_size": True}
        if self.reg_tokens > 0:
            kwargs["reg_tokens"] = self.reg_tokens
        kwargs.update(self.model_overrides)
        return kwargs


def encode_tokens(backbone: nn.Module, images: torch.Tensor, masks: torch.Tensor | None = None, mask_token: torch.Tensor | None = None) -> torch.Tensor:
    """Run a timm ViT on ``images`` ``(B, C, H, W)``, replacing masked patch embeddings by ``mask_token``.

    ``masks`` ``(B, H/p, W/p)`` bool marks the patches to hide. Returns the normalised tokens
    ``(B, prefix + N, D)`` (class token, registers, then patches in row-major order); without
    masks this equals ``backbone.forward_features(images)``.
    """
    if masks is None:
        return backbone.forward_features(images)
    embeddings = backbone.patch_embed(images)
    if embeddings.ndim != 4:
        msg = "Masked encoding needs a timm ViT built with dynamic_img_size=True (patch embeddings in NHWC)."
        raise ValueError(msg)
    embeddings = torch.where(masks[..., None], mask_token.to(embeddings.dtype), embeddings)
    tokens = backbone._pos_embed(embeddings)
    tokens = backbone.patch_drop(tokens)
    tokens = backbone.norm_pre(tokens)
    tokens = backbone.blocks(tokens)
    return backbone.norm(tokens)


class DinoPretraining(LightningModule):
    """Student/teacher pretraining with DINO, iBOT and KoLeo losses and an EMA teacher.

    A batch is a dict from ``PretrainDataset`` collated over ``B`` samples: ``global_crops``
    ``(B, G, C, S, S)``, ``local_crops`` ``(B, L, C, s, s)``, ``masks`` and ``patch_valid``
    ``(B, G, S/p, S/p)``. The teacher encodes the unmasked global crops. The student encodes the
    masked global crops and the local crops. The teacher is an exponential moving average of the
    student and is the encoder that ``export_encoder`` saves.
    """

    def __init__(self, config: PretrainConfig | dict[str, Any]) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = PretrainConfig(**config)
        self.config = config
        self.save_hyperparameters({"config": asdict(config)})

        student_backbone = timm.create_model(
            config.timm_name, pretrained=False, drop_path_rate=config.drop_path_rate, **config.timm_kwargs()
        )
        teacher_backbone = timm.create_model(config.timm_name, pretrained=False, **config.timm_kwargs())
        teacher_backbone.load_state_dict(student_backbone.state_dict())
        embed_dim = student_backbone.embed_dim
        head_kwargs = {
            "prototypes": config.head_prototypes,
            "hidden_dim": config.head_hidden_dim,
            "bottleneck_dim": config.head_bottleneck_dim,
            "layers": config.head_layers,
        }
        student_modules: dict[str, nn.Module] = {"backbone": student_backbone, "head": DINOHead(embed_dim, **head_kwargs)}
        if config.ibot_separate_head:
            # DINOv2's ViT-L/14 training config (dinov2/configs/train/vitl14.yaml) unties the two heads.
            student_modules["ibot_head"] = DINOHead(embed_dim, **head_kwargs)
        self.student = nn.ModuleDict(student_modules)
        self.teacher = copy.deepcopy(self.student)
        self.teacher["backbone"] = teacher_backbone
        self.teacher["backbone"].load_state_dict(student_backbone.state_dict())
        self.teacher.requires_grad_(False)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))

        self.patch_size = int(student_backbone.patch_embed.patch_size[0])
        self.prefix_tokens = int(student_backbone.num_prefix_tokens)
        self.dino_loss = DINOLoss(config.student_temperature)
        self.ibot_loss = IBOTPatchLoss(config.student_temperature)
        self.koleo_loss = KoLeoLoss()
        self._schedule: ScheduleValues | None = None

    def train(self, mode: bool = True) -> DinoPretraining:
        """Set training mode on the student only; the teacher always runs in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the teacher backbone's tokens ``(B, prefix + N, D)`` for ``images`` ``(B, C, H, W)``."""
        return self.teacher["backbone"].forward_features(images)

    def schedule(self, step: int, global_batch: int) -> ScheduleValues:
        """Return the learning rate, weight decay, teacher momentum and temperature at ``step``."""
        config = self.config
        total = config.max_steps
        peak = config.lr if config.lr is not None else config.base_lr * math.sqrt(global_batch / 1024)
        warmup = int(round(config.warmup * total))
        temperature_warmup = int(round(config.teacher_temperature_warmup * total))
        start_temperature, end_temperature = config.teacher_temperature
        if step < temperature_warmup:
            temperature = start_temperature + (end_temperature - start_temperature) * step / temperature_warmup
        else:
            temperature = end_temperature
        return ScheduleValues(
            learning_rate=warmup_cosine(step, total, warmup, peak, config.min_lr),
            weight_decay=cosine(step, total, *config.weight_decay),
            teacher_momentum=cosine(step, total, *config.teacher_momentum),
            teacher_temperature=temperature,
            freeze_last_layer=step < int(round(config.freeze_last_layer * total)),
        )

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Group the trainable parameters by learning-rate scale and weight-decay use.

        Block ``i`` of ``D`` gets a learning-rate scale ``layer_decay ** (D - i)``. The patch and
        position embeddings and the tokens get ``layer_decay ** (D + 1)``, and the patch embedding
        is scaled by ``patch_embed_lr_scale`` on top. The final norm and the heads get 1. Biases,
        norm weights and tokens take no weight decay.
        """
        depth = len(self.student["backbone"].blocks)
        named = [(f"student.{name}", parameter) for name, parameter in self.student.named_parameters()]
        named.append(("mask_token", self.mask_token))

        groups: dict[tuple[float, float], dict[str, Any]] = {}
        for name, parameter in named:
            if not parameter.requires_grad:
                continue
            layer = self._layer_index(name, depth)
            lr_scale = self.config.layer_decay ** (depth + 1 - layer)
            if ".patch_embed." in name:
                lr_scale *= self.config.patch_embed_lr_scale
            no_decay = parameter.ndim == 1 or name.endswith(".bias") or any(key in name for key in _NO_DECAY_NAMES)
            wd_scale = 0.0 if no_decay else 1.0
            group = groups.setdefault((lr_scale, wd_scale), {"params": [], "lr_scale": lr_scale, "wd_scale": wd_scale})
            group["params"].append(parameter)
        return list(groups.values())

    @staticmethod
    def _layer_index(name: str, depth: int) -> int:
        if name != "mask_token" and not name.startswith("student.backbone."):
            return depth + 1
        if ".blocks." in name:
            return int(name.split(".blocks.")[1].split(".")[0]) + 1
        if name == "mask_token" or any(key in name for key in ("patch_embed", *_NO_DECAY_NAMES)):
            return 0
        return depth + 1

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Return AdamW over ``parameter_groups``; the per-step schedule sets lr and weight decay."""
        return torch.optim.AdamW(self.parameter_groups(), lr=0.0, weight_decay=0.0, betas=self.config.betas)

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Apply this step's learning rate and weight decay to every parameter group."""
        global_batch = batch["global_crops"].shape[0] * self.trainer.world_size
        self._schedule = self.schedule(self.global_step, global_batch)
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self._schedule.learning_rate * group["lr_scale"]
                group["weight_decay"] = self._schedule.weight_decay * group["wd_scale"]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Keep the prototype layer fixed during its first steps, which stabilises the start of training."""
        if self._schedule is not None and self._schedule.freeze_last_layer:
            for head in self._heads(self.student):
                for parameter in head.last_layer.parameters():
                    parameter.grad = None

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Move the teacher towards the student: ``teacher = m * teacher + (1 - m) * student``."""
        momentum = self._schedule.teacher_momentum if self._schedule is not None else self.config.teacher_momentum[0]
        teacher_parameters = list(self.teacher.parameters())
        student_parameters = list(self.student.parameters())
        torch._foreach_mul_(teacher_parameters, momentum)
        torch._foreach_add_(teacher_parameters, student_parameters, alpha=1.0 - momentum)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Compute the weighted sum of the DINO, iBOT and KoLeo losses for one batch."""
        losses = self.compute_losses(batch)
        self.log("loss", losses["loss"], prog_bar=True)
        for key in ("dino", "ibot", "koleo", "teacher_marginal_entropy", "teacher_sample_entropy"):
            self.log(key, losses[key], prog_bar=key in ("dino", "ibot"))
        if self._schedule is not None:
            self.log("lr", self._schedule.learning_rate)
            self.log("teacher_momentum", self._schedule.teacher_momentum)
        return losses["loss"]

    def compute_losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return the total loss, each term, and two teacher entropies normalised by ``log K``.

        ``teacher_marginal_entropy`` is the entropy of the batch-mean centred teacher distribution.
        It is near 1 when the prototypes are used evenly and near 0 when one prototype takes every
        sample. ``teacher_sample_entropy`` is the mean entropy of each sample's distribution, which
        is near 1 when the targets carry no information about the view.
        """
        config = self.config
        temperature = self._schedule.teacher_temperature if self._schedule is not None else config.teacher_temperature[0]
        global_crops = batch["global_crops"]
        batch_size, n_global = global_crops.shape[:2]
        n_local = batch["local_crops"].shape[1]
        global_flat = global_crops.transpose(0, 1).flatten(0, 1)
        masks_flat = batch["masks"].transpose(0, 1).flatten(0, 1).bool()
        patch_selector = masks_flat.flatten(1)
        image_index = patch_selector.nonzero()[:, 0]

        with torch.no_grad():
            teacher_tokens = self.teacher["backbone"].forward_features(global_flat)
            teacher_cls = self.teacher["head"](teacher_tokens[:, 0]).float()
            teacher_patches = self._patch_head(self.teacher)(teacher_tokens[:, self.prefix_tokens :][patch_selector]).float()
            cls_targets = sinkhorn_knopp(teacher_cls, temperature, config.sinkhorn_iterations)
            patch_targets = sinkhorn_knopp(teacher_patches, temperature, config.sinkhorn_iterations)

        student_tokens = encode_tokens(self.student["backbone"], global_flat, masks_flat, self.mask_token)
        student_cls_features = student_tokens[:, 0]
        student_global = self.student["head"](student_cls_features)
        student_patches = self._patch_head(self.student)(student_tokens[:, self.prefix_tokens :][patch_selector])
        if n_local > 0:
            local_flat = batch["local_crops"].transpose(0, 1).flatten(0, 1)
            student_local = self.student["head"](self.student["backbone"].forward_features(local_flat)[:, 0])
        else:
            student_local = student_global.new_zeros(0, config.head_prototypes)

        prototypes = student_global.shape[-1]
        dino = self.dino_loss(
            student_global.view(n_global, batch_size, prototypes),
            student_local.view(n_local, batch_size, prototypes),
            cls_targets.view(n_global, batch_size, prototypes),
        )
        ibot = self.ibot_loss(student_patches, patch_targets, image_index)
        koleo = sum(self.koleo_loss(features) for features in student_cls_features.view(n_global, batch_size, -1))
        loss = config.dino_weight * dino + config.ibot_weight * ibot + config.koleo_weight * koleo

        with torch.no_grad():
            log_k = math.log(prototypes)
            marginal = cls_targets.mean(dim=0)
            marginal_entropy = -(marginal * torch.log(marginal.clamp_min(1e-12))).sum() / log_k
            sample_entropy = -(cls_targets * torch.log(cls_targets.clamp_min(1e-12))).sum(dim=-1).mean() / log_k
        return {
            "loss": loss,
            "dino": dino.detach(),
            "ibot": ibot.detach(),
            "koleo": koleo.detach(),
            "teacher_marginal_entropy": marginal_entropy,
            "teacher_sample_entropy": sample_entropy,
        }

    @staticmethod
    def _patch_head(branch: nn.ModuleDict) -> nn.Module:
        return branch["ibot_head"] if "ibot_head" in branch else branch["head"]

    @staticmethod
    def _heads(branch: nn.ModuleDict) -> list[nn.Module]:
        return [branch[key] for key in ("head", "ibot_head") if key in branch]

    def export_encoder(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Save the teacher backbone as an encoder checkpoint file (see ``anomalib_modmap.encoder_checkpoint``)."""
        config = self.config
        record = {"config": _plain(asdict(config)), "steps": int(self.global_step)}
        record.update(extra or {})
        return save_encoder_checkpoint(
            path,
            self.teacher["backbone"],
            timm_name=config.timm_name,
            timm_kwargs=config.timm_kwargs(),
            modality=config.modality,
            depth_normalization=config.depth_normalization if config.modality == "depth" else None,
            extra={"pretraining": record},
        )


def _plain(value: Any) -> Any:
    """Convert tuples to lists recursively so that the record loads with ``weights_only=True``."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
