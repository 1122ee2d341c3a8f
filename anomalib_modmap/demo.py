"""``modmap demo``: train and test Modmap on the embedded procedural demo category.

The command generates the demo category once (``sim3d_datamodule.synthesis``),
trains Modmap with CPU-sized settings and prints I-AUROC and V-AUPRO@1%.
Anomaly volumes and overlay PNGs land under ``<results>/Modmap/SiM3D/<category>/``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import click

from anomalib_modmap.backbones import EncoderWeightsError, get_encoder_config, resolve_weights

logger = logging.getLogger(__name__)


def _weights_or_random(encoder: str, modality: str, weights: str) -> str:
    """Return ``weights``; with ``auto``, ``pretrained`` when a local file is found and ``random`` otherwise."""
    if weights != "auto":
        return weights
    try:
        resolve_weights(get_encoder_config(encoder, modality), "pretrained")
    except EncoderWeightsError:
        warnings.warn(
            f"No pretrained weights found for {encoder!r}, so the demo runs it with random weights and its "
            f"scores are not meaningful. See the README section 'Encoder weights' for where to put the files.",
            UserWarning,
            stacklevel=2,
        )
        return "random"
    return "pretrained"


def run_demo(
    root: Path,
    results: Path,
    category: str = "demo_stool",
    image_size: int = 112,
    epochs: int = 20,
    image_encoder: str = "dinov2_vits14",
    depth_encoder: str = "dino_depth_vits14",
    image_weights: str = "auto",
    depth_weights: str = "auto",
) -> dict[str, float]:
    """Generate the demo category if needed, train and test Modmap, and return the test metrics."""
    from anomalib.engine import Engine

    from anomalib_modmap.models import Modmap
    from sim3d_datamodule.datamodule import SiM3D
    from sim3d_datamodule.synthesis.demo import SHARED_DEMO_SETTINGS, ensure_demo_dataset

    ensure_demo_dataset(root, category=category, **SHARED_DEMO_SETTINGS)
    model = Modmap(
        image_encoder=image_encoder,
        depth_encoder=depth_encoder,
        image_weights=_weights_or_random(image_encoder, "image", image_weights),
        depth_weights=_weights_or_random(depth_encoder, "depth", depth_weights),
        max_epochs=epochs,
    )
    datamodule = SiM3D(root=root, category=category, image_size=image_size)
    engine = Engine(default_root_dir=results)
    engine.train(model, datamodule=datamodule)
    return {name: float(value) for name, value in engine.trainer.callback_metrics.items() if "AUROC" in name or "AUPRO" in name}


@click.command("demo")
@click.option("--root", type=click.Path(path_type=Path), default=Path("datasets/demo"), show_default=True, help="Folder for the generated demo category.")
@click.option("--results", type=click.Path(path_type=Path), default=Path("results"), show_default=True, help="Folder for checkpoints, anomaly volumes and overlays.")
@click.option("--image-size", type=int, default=112, show_default=True, help="Side of the square input images, pixels.")
@click.option("--epochs", type=int, default=20, show_default=True, help="Training epochs.")
@click.option("--image-encoder", default="dinov2_vits14", show_default=True, help="Named encoder or timm ViT for the images.")
@click.option("--image-weights", default="auto", show_default=True, help="Weights file, 'pretrained', 'random' or 'auto' (pretrained when found, else random).")
@click.option("--depth-weights", default="auto", show_default=True, help="As --image-weights, for the depth encoder.")
def demo(root: Path, results: Path, image_size: int, epochs: int, image_encoder: str, image_weights: str, depth_weights: str) -> None:
    """Train and test Modmap on the embedded demo data (CPU-sized settings)."""
    metrics = run_demo(
        root,
        results,
        image_size=image_size,
        epochs=epochs,
        image_encoder=image_encoder,
        image_weights=image_weights,
        depth_weights=depth_weights,
    )
    for name, value in sorted(metrics.items()):
        click.echo(f"{name}: {value:.4f}")
