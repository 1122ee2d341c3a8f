"""Measure pretraining speed and loss of a small encoder on a folder of depth maps or images.

Usage (from the repository root):
    python -m benchmarks.bench_pretraining depth ../shared/data/redkitchen '*.depth.png' OUT_DIR [--steps 300]
    python -m benchmarks.bench_pretraining image ../shared/data/redkitchen '*.color.jpg' OUT_DIR [--steps 300]

Trains the small encoder (width 128, 4 blocks, 84/42-pixel crops, 2048 prototypes) with one
PyTorch thread and one loader process. Then it prints steps per second of training alone
(start-up excluded), the first and last logged losses and the teacher's sample entropy, and
where the encoder and the loss-curve PNG were written.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lightning.pytorch import Callback

from anomalib_modmap.pretraining.crops import CropSettings
from anomalib_modmap.pretraining.module import PretrainConfig
from anomalib_modmap.pretraining.plots import read_metrics
from anomalib_modmap.pretraining.train import RunSettings, run_pretraining


class StepTimer(Callback):
    """Records the wall-clock time of the first and the last training step."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.last: float | None = None
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.steps += 1


def main() -> None:
    """Run one pretraining job and print its speed and losses."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modality", choices=("depth", "image"))
    parser.add_argument("data", help="folder with the depth maps or images")
    parser.add_argument("pattern", help="file-name pattern, e.g. '*.depth.png'")
    parser.add_argument("out_dir", type=Path, help="folder for the encoder, training state and loss curves")
    parser.add_argument("--steps", type=int, default=300, help="optimisation steps")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop after this many minutes")
    args = parser.parse_args()

    config = PretrainConfig(
        modality=args.modality,
        depth_normalization="max" if args.modality == "depth" else None,
        in_chans=1 if args.modality == "depth" else 3,
        img_size=84,
        model_overrides={"embed_dim": 128, "depth": 4, "num_heads": 4},
        head_prototypes=2048,
        head_hidden_dim=512,
        head_bottleneck_dim=128,
        max_steps=args.steps,
        lr=5e-4,
    )
    crops = CropSettings(global_size=84, local_size=42, local_crops=4)
    settings = RunSettings(
        data=[f"folder:{args.data}"],
        out=args.out_dir / f"{args.modality}_encoder.ckpt",
        checkpoint_dir=args.out_dir / f"{args.modality}_work",
        pattern=args.pattern,
        batch_size=16,
        num_workers=1,
        accelerator="cpu",
        devices=1,
        checkpoint_every=max(args.steps // 4, 1),
        max_minutes=args.max_minutes,
        cpu_threads=1,
    )

    timer = StepTimer()
    run_pretraining(config, crops, settings, callbacks=[timer])
    metrics = read_metrics(settings.checkpoint_dir / "logs")
    losses = metrics["loss"].dropna()
    steps_per_second = (timer.steps - 1) / (timer.last - timer.first) if timer.steps > 1 else float("nan")
    print(f"{args.modality}: {timer.steps} steps, {steps_per_second:.2f} steps/s")
    print(f"loss {losses.iloc[0]:.3f} (step {int(metrics['step'].iloc[0])}) -> {losses.iloc[-1]:.3f} (step {int(metrics['step'].iloc[-1])})")
    print(f"teacher sample entropy at the end: {metrics['teacher_sample_entropy'].dropna().iloc[-1]:.5f}")
    print(f"encoder: {settings.out}; loss curves: {settings.checkpoint_dir / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
