"""bf16 autocast on CUDA must keep Modmap's anomaly maps close to float32 (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from modmap_helpers import STATISTICS_KWARGS, save_patch_statistics_weights, smooth_scene

from anomalib_modmap.models import Modmap

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_bf16_maps_match_float32(tmp_path):
    arguments = {
        "image_encoder": "vit_small_patch14_dinov2",
        "depth_encoder": "vit_small_patch14_dinov2",
        "image_weights": str(save_patch_statistics_weights(tmp_path / "image.pth", 3)),
        "depth_weights": str(save_patch_statistics_weights(tmp_path / "depth.pth", 1)),
        "image_encoder_kwargs": STATISTICS_KWARGS,
        "depth_encoder_kwargs": {**STATISTICS_KWARGS, "in_chans": 1},
        "image_num_blocks": 0,
        "depth_num_blocks": 0,
        "final_norm": False,
        "evaluator": False,
        "save_volumes": False,
    }
    scene = smooth_scene("bad_stain", seed=3, stain_views=(1,))
    maps = {}
    for bf16 in (False, True):
        model = Modmap(**arguments, bf16=bf16).cuda().eval()
        for name in ("image", "depth_map", "valid_depth", "view_index"):
            setattr(scene, name, getattr(scene, name).cuda())
        maps[bf16] = model._predict_batch(scene, save=False).anomaly_map.float().cpu()

    assert maps[False].abs().max() > 0
    torch.testing.assert_close(maps[True], maps[False], atol=0.05, rtol=0.05)
