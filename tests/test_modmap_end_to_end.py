"""Modmap end to end on generated scenes: obvious defects must outscore nominal instances."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from modmap_helpers import STATISTICS_KWARGS, save_patch_statistics_weights, smooth_scene
from torch.utils.data import DataLoader

from anomalib_modmap.models import Modmap


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Modmap, pl.Trainer]:
    """Train Modmap on a patch-statistics encoder for 120 epochs (about 10 s on 2 CPU cores).

    Random ViT weights carry almost no local signal: timm's DINOv2
    configurations start LayerScale near zero, and the per-token LayerNorm
    hides small depth changes. The encoders here are the patch embedding of a
    ViT whose filters compute each patch's level and slope (see
    ``save_patch_statistics_weights``), read before any transformer block and
    without the final LayerNorm. A bright stain changes the image tokens' level
    and a dent changes the depth tokens' level and slope, so both defects are
    visible to the mappers while nominal noise is not.
    """
    tmp_path = tmp_path_factory.mktemp("modmap")
    image_weights = save_patch_statistics_weights(tmp_path / "image.pth", in_chans=3)
    depth_weights = save_patch_statistics_weights(tmp_path / "depth.pth", in_chans=1)
    model = Modmap(
        image_encoder="vit_small_patch14_dinov2",
        depth_encoder="vit_small_patch14_dinov2",
        image_weights=str(image_weights),
        depth_weights=str(depth_weights),
        image_encoder_kwargs=STATISTICS_KWARGS,
        depth_encoder_kwargs={**STATISTICS_KWARGS, "in_chans": 1},
        image_num_blocks=0,
        depth_num_blocks=0,
        final_norm=False,
        depth_normalization="minmax",
        max_epochs=120,
        learning_rate=5e-3,
        max_learning_rate=2.5e-2,
        evaluator=False,
        save_volumes=False,
    )
    trainer = pl.Trainer(
        max_epochs=120,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(eval mode|val_dataloader|num_workers).*")
        trainer.fit(model, DataLoader([smooth_scene("train", seed=0)], batch_size=None))
    return model, trainer


def test_defects_outscore_nominal_instances(trained):
    model, trainer = trained
    scenes = [
        smooth_scene("good_1", seed=1),
        smooth_scene("good_2", seed=2),
        smooth_scene("bad_stain", seed=3, stain_views=(1, 2, 3)),
        smooth_scene("bad_dent", seed=4, dent_views=(2, 3, 4)),
    ]
    outputs = trainer.predict(model, DataLoader(scenes, batch_size=None))
    scores = {output.instance[0]: float(output.pred_score[0]) for output in outputs}

    nominal_max = max(scores["good_1"], scores["good_2"])
    assert scores["bad_stain"] > 2 * nominal_max, scores
    assert scores["bad_dent"] > 1.25 * nominal_max, scores


def test_defect_maps_peak_in_defect_views(trained):
    model, trainer = trained
    stained = trainer.predict(model, DataLoader([smooth_scene("bad_stain", seed=3, stain_views=(1, 2, 3))], batch_size=None))[0]
    per_view = stained.anomaly_map[0].amax(dim=(-2, -1))

    assert per_view[[1, 2, 3]].min() > 2 * per_view[[0, 4, 5]].max(), per_view
    # The stain covers rows and columns 16..37 of view 2; its peak must lie there.
    peak = torch.nonzero(stained.anomaly_map[0, 2] == stained.anomaly_map[0, 2].max())[0]
    assert 12 <= int(peak[0]) <= 42, peak
    assert 12 <= int(peak[1]) <= 42, peak


def test_dent_maps_peak_in_dented_views(trained):
    model, trainer = trained
    dented = trainer.predict(model, DataLoader([smooth_scene("bad_dent", seed=4, dent_views=(2, 3, 4))], batch_size=None))[0]
    per_view = dented.anomaly_map[0].amax(dim=(-2, -1))

    assert per_view[[2, 3, 4]].min() > per_view[[0, 1, 5]].max(), per_view
