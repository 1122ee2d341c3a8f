"""Run a pretraining job: data, Lightning trainer, periodic checkpoints, encoder export and loss plot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, RandomSampler

from .crops import CropSettings
from .dataset import MaskSettings, PretrainDataset
from .module import DinoPretraining, PretrainConfig
from .plots import plot_loss_curves
from .sources import find_files

logger = logging.getLogger(__name__)


@dataclass
class RunSettings:
    """Settings of a pretraining run that do not change the learned weights' meaning.

    ``checkpoint_dir`` contains ``last.ckpt`` (the full training state, written every
    ``checkpoint_every`` steps and at the end), the CSV logs and the loss-curve PNG.
    ``resume`` continues from ``checkpoint_dir/last.ckpt``. ``max_minutes`` stops training after
    that wall-clock time even when ``max_steps`` is not reached. ``precision`` ``"auto"`` means
    bf16 mixed precision on a GPU and float32 on the CPU. ``cpu_threads`` sets
    ``torch.set_num_threads`` (``None`` keeps PyTorch's default); on a CPU shared with other jobs,
    1 thread can be several times faster than oversubscribed cores.
    """

    data: list[str]
    out: Path
    checkpoint_dir: Path
    pattern: str | None = None
    batch_size: int = 32
    num_workers: int = 4
    accelerator: str = "auto"
    devices: int | str = "auto"
    precision: str = "auto"
    gradient_clip: float = 3.0
    checkpoint_every: int = 500
    log_every: int = 10
    resume: bool = False
    max_minutes: float | None = None
    seed: int = 0
    cpu_threads: int | None = None


class EncoderExport(Callback):
    """Writes the teacher encoder to ``path`` every ``every`` steps, so that a stopped run leaves usable weights."""

    def __init__(self, path: Path, every: int) -> None:
        self.path = path
        self.every = every

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0 and trainer.is_global_zero:
            pl_module.export_encoder(self.path)


def resolve_precision(precision: str, accelerator: str) -> str:
    """Return ``precision``, replacing ``"auto"`` by ``"bf16-mixed"`` when a CUDA GPU will be used, else ``"32-true"``."""
    if precision != "auto":
        return precision
    uses_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if uses_gpu else "32-true"


def build_dataset(
    config: PretrainConfig,
    crops: CropSettings,
    settings: RunSettings,
    patch_size: int,
    masks: MaskSettings | None = None,
) -> PretrainDataset:
    """Find the files of every data source and wrap them in a ``PretrainDataset``."""
    files = find_files(settings.data, config.modality, settings.pattern)
    logger.info("Pretraining the %s encoder on %d files from %d source(s).", config.modality, len(files), len(settings.data))
    return PretrainDataset(
        files,
        config.modality,
        crops,
        patch_size=patch_size,
        depth_normalization=config.depth_normalization if config.modality == "depth" else None,
        masks=masks,
        channels=config.in_chans,
    )


def run_pretraining(
    config: PretrainConfig,
    crops: CropSettings,
    settings: RunSettings,
    callbacks: list[Callback] | None = None,
) -> Path:
    """Train an encoder and write it to ``settings.out``; return that path.

    ``callbacks`` are added to the Lightning trainer's own. Raises ``FileNotFoundError`` when ``resume`` is set and no ``last.ckpt`` exists.
    """
    if config.img_size != crops.global_size:
        msg = f"The encoder's img_size ({config.img_size}) must equal the global crop size ({crops.global_size})."
        raise ValueError(msg)
    resume_path = settings.checkpoint_dir / "last.ckpt"
    if settings.resume and not resume_path.is_file():
        msg = f"Cannot resume: {resume_path} not found. Run without --resume, or pass the --checkpoint-dir of the earlier run."
        raise FileNotFoundError(msg)

    previous_threads = torch.get_num_threads()
    if settings.cpu_threads is not None:
        torch.set_num_threads(settings.cpu_threads)
    try:
        return _fit_and_export(config, crops, settings, resume_path, callbacks or [])
    finally:
        torch.set_num_threads(previous_threads)


def _fit_and_export(
    config: PretrainConfig,
    crops: CropSettings,
    settings: RunSettings,
    resume_path: Path,
    callbacks: list[Callback],
) -> Path:
    seed_everything(settings.seed, workers=True)
    module = DinoPretraining(config)
    dataset = build_dataset(config, crops, settings, patch_size=module.patch_size)
    # Sampling with replacement keeps an epoch at least one batch long on a data set smaller than the batch.
    sampler = RandomSampler(dataset, replacement=True, num_samples=max(len(dataset), settings.batch_size))
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        sampler=sampler,
        num_workers=settings.num_workers,
        drop_last=True,
        persistent_workers=settings.num_workers > 0,
        pin_memory=torch.cuda.is_available(),
    )

    settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = ModelCheckpoint(
        dirpath=settings.checkpoint_dir,
        filename="last",
        every_n_train_steps=settings.checkpoint_every,
        save_top_k=1,
        enable_version_counter=False,
    )
    trainer = Trainer(
        max_steps=config.max_steps,
        max_time=timedelta(minutes=settings.max_minutes) if settings.max_minutes else None,
        accelerator=settings.accelerator,
        devices=settings.devices,
        precision=resolve_precision(settings.precision, settings.accelerator),
        gradient_clip_val=settings.gradient_clip,
        gradient_clip_algorithm="norm",
        log_every_n_steps=settings.log_every,
        callbacks=[checkpoint, EncoderExport(settings.out, settings.checkpoint_every), TQDMProgressBar(), *callbacks],
        logger=CSVLogger(save_dir=settings.checkpoint_dir, name="logs"),
        default_root_dir=settings.checkpoint_dir,
        enable_model_summary=False,
    )
    trainer.fit(module, loader, ckpt_path=resume_path if settings.resume else None)
    trainer.save_checkpoint(resume_path)

    if trainer.is_global_zero:
        module.export_encoder(settings.out)
        logger.info("Encoder written to %s after %d steps.", settings.out, module.global_step)
        plot_path = settings.checkpoint_dir / "loss_curves.png"
        try:
            plot_loss_curves(
                settings.checkpoint_dir / "logs",
                plot_path,
                title=f"{config.modality} encoder pretraining",
                prototypes=config.head_prototypes,
            )
            logger.info("Loss curves written to %s.", plot_path)
        except FileNotFoundError as error:
            logger.warning("Loss curves not plotted: %s", error)
    return settings.out
