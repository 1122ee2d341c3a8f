"""Click commands ``modmap pretrain-depth`` and ``modmap pretrain-image``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import click

from sim3d_datamodule.transforms import DEPTH_NORMALIZATIONS


def _shared_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options common to both modalities."""
    options = [
        click.option("--data", "data", multiple=True, required=True, metavar="[LAYOUT:]PATH",
                     help="Data source, repeatable. LAYOUT is sim3d, mvtec3d, eyecandies or folder; detected when omitted."),
        click.option("--glob", "pattern", default=None, metavar="PATTERN",
                     help="File-name pattern for folder sources, e.g. '*.depth.png'. Default: every readable file."),
        click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
                     help="Encoder checkpoint to write (rewritten at every periodic checkpoint)."),
        click.option("--checkpoint-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder for last.ckpt, logs and loss_curves.png. Default: OUT's name with '_work' beside it."),
        click.option("--resume", is_flag=True, help="Continue from CHECKPOINT_DIR/last.ckpt."),
        click.option("--max-steps", type=click.IntRange(min=1), default=10000, show_default=True,
                     help="Optimisation steps; every schedule spans them."),
        click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Stop after this many minutes of training even before --max-steps."),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Views per step and device."),
        click.option("--lr", type=float, default=None,
                     help="Peak learning rate. Default: 0.004 * sqrt(global batch / 1024), as DINOv2."),
        click.option("--model", "timm_name", default="vit_small_patch14_dinov2", show_default=True, help="timm model name of the encoder."),
        click.option("--embed-dim", type=click.IntRange(min=1), default=None, help="Override the token width (384 for ViT-S)."),
        click.option("--blocks", type=click.IntRange(min=1), default=None, help="Override the number of transformer blocks (12 for ViT-S)."),
        click.option("--heads", type=click.IntRange(min=1), default=None, help="Override the number of attention heads (6 for ViT-S)."),
        click.option("--reg-tokens", type=click.IntRange(min=0), default=0, show_default=True, help="Register tokens."),
        click.option("--global-size", type=click.IntRange(min=1), default=224, show_default=True, help="Global crop side in pixels."),
        click.option("--local-size", type=click.IntRange(min=1), default=98, show_default=True, help="Local crop side in pixels."),
        click.option("--local-crops", type=click.IntRange(min=0), default=8, show_default=True, help="Local crops per view."),
        click.option("--prototypes", type=click.IntRange(min=2), default=65536, show_default=True, help="Prototypes of each head."),
        click.option("--head-hidden-dim", type=click.IntRange(min=1), default=2048, show_default=True, help="Hidden width of the heads."),
        click.option("--head-bottleneck-dim", type=click.IntRange(min=1), default=256, show_default=True, help="Bottleneck width of the heads."),
        click.option("--num-workers", type=click.IntRange(min=0), default=4, show_default=True, help="Data-loading processes."),
        click.option("--accelerator", default="auto", show_default=True, help="Lightning accelerator: auto, cpu, gpu."),
        click.option("--devices", default="auto", show_default=True, help="Lightning devices: auto, a count, or a list."),
        click.option("--precision", default="auto", show_default=True,
                     help="Lightning precision; auto means bf16-mixed on a GPU and 32-true on the CPU."),
        click.option("--checkpoint-every", type=click.IntRange(min=1), default=500, show_default=True,
                     help="Steps between checkpoints and encoder exports."),
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
        click.option("--cpu-threads", type=click.IntRange(min=1), default=None,
                     help="PyTorch CPU threads of the training process. Default: PyTorch's choice."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _run(modality: str, depth_normalization: str | None, in_chans: int, **kwargs: Any) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    from .crops import CropSettings
    from .module import PretrainConfig
    from .train import RunSettings, run_pretraining

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {
        key: kwargs[option]
        for option, key in (("embed_dim", "embed_dim"), ("blocks", "depth"), ("heads", "num_heads"))
        if kwargs[option] is not None
    }
    config = PretrainConfig(
        modality=modality,
        depth_normalization=depth_normalization,
        timm_name=kwargs["timm_name"],
        in_chans=in_chans,
        img_size=kwargs["global_size"],
        reg_tokens=kwargs["reg_tokens"],
        model_overrides=overrides,
        head_prototypes=kwargs["prototypes"],
        head_hidden_dim=kwargs["head_hidden_dim"],
        head_bottleneck_dim=kwargs["head_bottleneck_dim"],
        max_steps=kwargs["max_steps"],
        lr=kwargs["lr"],
    )
    crops = CropSettings(global_size=kwargs["global_size"], local_size=kwargs["local_size"], local_crops=kwargs["local_crops"])
    out: Path = kwargs["out"]
    devices = kwargs["devices"]
    settings = RunSettings(
        data=list(kwargs["data"]),
        out=out,
        checkpoint_dir=kwargs["checkpoint_dir"] or out.with_name(f"{out.stem}_work"),
        pattern=kwargs["pattern"],
        batch_size=kwargs["batch_size"],
        num_workers=kwargs["num_workers"],
        accelerator=kwargs["accelerator"],
        devices=int(devices) if devices.isdigit() else devices,
        precision=kwargs["precision"],
        checkpoint_every=kwargs["checkpoint_every"],
        resume=kwargs["resume"],
        max_minutes=kwargs["max_minutes"],
        seed=kwargs["seed"],
        cpu_threads=kwargs["cpu_threads"],
    )
    try:
        run_pretraining(config, crops, settings)
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error
    if rank_zero_only.rank == 0:
        click.echo(f"Encoder written to {out}; training state and loss_curves.png in {settings.checkpoint_dir}")


@click.command("pretrain-depth")
@_shared_options
@click.option("--depth-normalization", type=click.Choice(DEPTH_NORMALIZATIONS), default="max", show_default=True,
              help="Per-view depth normalisation, stored with the weights: divide by the maximum, or min-max over valid pixels.")
def pretrain_depth(depth_normalization: str, **kwargs: Any) -> None:
    """Pretrain a one-channel depth encoder (DINO-Depth) self-supervised on depth maps."""
    _run("depth", depth_normalization, in_chans=1, **kwargs)


@click.command("pretrain-image")
@_shared_options
@click.option("--in-chans", type=click.IntRange(min=1), default=3, show_default=True,
              help="Input channels; the gray image is repeated to fill them (3 matches Modmap's image input).")
def pretrain_image(in_chans: int, **kwargs: Any) -> None:
    """Pretrain a grayscale image encoder self-supervised on images (colour files are converted to gray)."""
    _run("image", None, in_chans=in_chans, **kwargs)
