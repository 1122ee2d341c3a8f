"""Train and test Modmap with pretrained encoders, or with the same architectures at random initialisation.

Usage (from the repository root):
    python -m benchmarks.compare_encoders_modmap ROOT CATEGORY IMAGE.ckpt DEPTH.ckpt [--random] \
        [--image-size 168] [--epochs 100]

IMAGE.ckpt and DEPTH.ckpt are encoder files from ``modmap pretrain-image`` and
``modmap pretrain-depth``. With ``--random`` their architectures are rebuilt with random weights
instead. Prints one JSON line: the voxel AUROC inside each anomalous instance (the instance's
voxels scored against its own defect voxels), their mean, the AUROC over the voxels of all
anomalous instances pooled, the instance AUROC and the training time.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomalib_modmap.encoder_checkpoint import read_encoder_checkpoint
from anomalib_modmap.models import Modmap
from sim3d_datamodule.datamodule import SiM3D


def main() -> None:
    """Fit Modmap on the training instance, predict the test instances and print the AUROCs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset root that contains the category folder")
    parser.add_argument("category", help="category folder name")
    parser.add_argument("image_encoder", help="image encoder checkpoint")
    parser.add_argument("depth_encoder", help="depth encoder checkpoint")
    parser.add_argument("--random", action="store_true", help="use the encoders' architectures with random weights")
    parser.add_argument("--image-size", type=int, default=168, help="side of the square input images, pixels")
    parser.add_argument("--epochs", type=int, default=100, help="Modmap training epochs")
    args = parser.parse_args()

    torch.set_num_threads(1)
    pl.seed_everything(0)
    encoders = {name: read_encoder_checkpoint(path) for name, path in (("image", args.image_encoder), ("depth", args.depth_encoder))}
    model = Modmap(
        image_encoder=encoders["image"].timm_name,
        depth_encoder=encoders["depth"].timm_name,
        image_weights="random" if args.random else args.image_encoder,
        depth_weights="random" if args.random else args.depth_encoder,
        image_encoder_kwargs=encoders["image"].timm_kwargs,
        depth_encoder_kwargs=encoders["depth"].timm_kwargs,
        depth_normalization=encoders["depth"].depth_normalization,
        max_epochs=args.epochs,
        save_volumes=False,
        evaluator=False,
        seed=0,
    )
    datamodule = SiM3D(root=args.root, category=args.category, image_size=args.image_size)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )

    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=datamodule)
        fit_seconds = time.perf_counter() - started
        datamodule.setup("test")
        outputs = trainer.predict(model, dataloaders=datamodule.test_dataloader())

    per_instance: dict[str, float] = {}
    labels, scores, pooled_scores, pooled_labels = [], [], [], []
    for output in outputs:
        for index, instance in enumerate(output.instance):
            label = int(output.gt_label[index])
            labels.append(label)
            scores.append(float(output.pred_score[index]))
            if label == 1:
                voxel_labels = output.gt_volume[index].anomalous.cpu().numpy().astype(int)
                voxel_scores = output.pred_volume[index].float().cpu().numpy()
                per_instance[instance] = round(float(roc_auc_score(voxel_labels, voxel_scores)), 4)
                pooled_labels.append(voxel_labels)
                pooled_scores.append(voxel_scores)

    result = {
        "encoders": "random" if args.random else "pretrained",
        "image_size": args.image_size,
        "epochs": args.epochs,
        "fit_seconds": round(fit_seconds, 1),
        "voxel_auroc_per_anomalous_instance": per_instance,
        "voxel_auroc_mean": round(float(np.mean(list(per_instance.values()))), 4),
        "voxel_auroc_pooled_anomalous": round(float(roc_auc_score(np.concatenate(pooled_labels), np.concatenate(pooled_scores))), 4),
        "instance_auroc": round(float(roc_auc_score(labels, scores)), 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
