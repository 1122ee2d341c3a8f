"""Per-view baselines fused into anomaly volumes, and CFM's SiM3D configuration of Modmap."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from modmap_helpers import smooth_scene

from anomalib_modmap.backbones import get_encoder_config
from anomalib_modmap.models import CfmSim3d, Modmap
from anomalib_modmap.models.baselines import (
    BaselineWeightsError,
    PerViewVolumeFusion,
    build_per_view_model,
    check_per_view_data,
    check_pointmae_weights,
    efficient_ad_teacher_path,
    fuse_view_maps,
    per_view_callbacks,
    per_view_data_defaults,
    score_volumes,
    write_penalty_images,
    write_random_pointmae_weights,
)
from anomalib_modmap.volume import fuse_anomaly_volume
from sim3d_datamodule.datamodule import SiM3D
from sim3d_datamodule.testing import make_sim3d_fixture

VIEWS = 3
TINY_VIT = {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 1, "img_size": 64}


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sim3d")
    make_sim3d_fixture(root, category="toy", views=VIEWS, size=(48, 64), setups=("real2real",))
    return root


@pytest.fixture(scope="module")
def instances(fixture_root) -> list:
    datamodule = SiM3D(root=fixture_root, category="toy", image_size=32, val_split_mode="none")
    datamodule.setup("test")
    return [datamodule.test_data[index] for index in range(len(datamodule.test_data))]


def _view_maps(instances: list, size: int = 16) -> dict[tuple[str, int], torch.Tensor]:
    """Give every view a map of random scores at a lower resolution than the views."""
    generator = torch.Generator().manual_seed(0)
    return {(item.instance, int(view)): torch.rand(size, size, generator=generator) for item in instances for view in item.view_index}


def test_fusion_matches_direct_fusion(instances):
    view_maps = _view_maps(instances)
    volumes = fuse_view_maps(view_maps, instances)

    assert [volume.instance for volume in volumes] == [item.instance for item in instances]
    for item, volume in zip(instances, volumes, strict=True):
        assert volume.anomaly_maps.shape == (VIEWS, 32, 32)
        if item.gt_volume is None:
            assert volume.scores is None
            continue
        foreground = volume.anomaly_maps != 0
        expected = fuse_anomaly_volume(volume.anomaly_maps, item.depth_map[:, 0], foreground, item.intrinsics, item.world_to_camera, item.gt_volume)
        assert volume.scores.shape == (item.gt_volume.num_voxels,)
        torch.testing.assert_close(volume.scores, expected)


def test_fusion_keeps_view_order(instances):
    """Each view's map must land through that view's own camera: swapped maps change the volume."""
    view_maps = _view_maps(instances)
    item = next(item for item in instances if item.gt_volume is not None and item.gt_label == 1)
    swapped = dict(view_maps)
    swapped[(item.instance, 0)], swapped[(item.instance, 1)] = view_maps[(item.instance, 1)], view_maps[(item.instance, 0)]

    original = fuse_view_maps(view_maps, [item])[0].scores
    changed = fuse_view_maps(swapped, [item])[0].scores

    assert not torch.equal(original, changed)


def test_fusion_view_subset(instances):
    item = next(item for item in instances if item.gt_volume is not None)
    view_maps = {key: torch.full((8, 8), float(key[1] + 1)) for key in _view_maps([item])}

    volume = fuse_view_maps(view_maps, [item], views=[0])[0]

    assert volume.anomaly_maps.shape[0] == 1
    assert float(volume.scores.max()) <= 1.0


def test_fusion_missing_view_raises(instances):
    view_maps = _view_maps(instances)
    item = instances[0]
    del view_maps[(item.instance, 2)]

    with pytest.raises(KeyError, match=f"view 2 of instance {item.instance}"):
        fuse_view_maps(view_maps, instances)


def test_score_volumes_perfect_maps(instances):
    """Maps that equal the ground truth score I-AUROC 1 and V-AUPRO 1."""
    volumes = fuse_view_maps(_view_maps(instances), instances)
    for volume in volumes:
        if volume.scores is not None and volume.grid.anomalous is not None:
            volume.scores = volume.grid.anomalous.float()
        elif volume.scores is not None:
            volume.scores = torch.zeros_like(volume.scores)

    metrics = score_volumes(volumes)

    assert metrics["instance_AUROC"] == pytest.approx(1.0)
    assert metrics["voxel_AUPRO@1%"] == pytest.approx(1.0)


def test_cfm_without_pointmae_weights(tmp_path):
    missing = tmp_path / "pointmae.pth"

    with pytest.raises(BaselineWeightsError, match="Point-MAE") as raised:
        check_pointmae_weights(missing)
    assert str(missing) in str(raised.value)
    assert "pretrain.pth" in str(raised.value)
    with pytest.raises(BaselineWeightsError):
        build_per_view_model("CFM", {"pointmae_weights": str(missing)}, pretrained=False)


def test_cfm_loads_written_pointmae_weights(tmp_path):
    path = write_random_pointmae_weights(tmp_path / "pointmae.pth", group_size=8, num_group=16)

    model = build_per_view_model("CFM", {"pointmae_weights": str(path), "group_size": 8, "num_group": 16}, pretrained=False)

    stored = torch.load(path, weights_only=True)["base_model"]
    loaded = model.model.feature_extractors.extractors.xyz_backbone.state_dict()
    name = next(key for key in stored if key.startswith("encoder.") and key in loaded)
    torch.testing.assert_close(loaded[name], stored[name])


def test_cfm_at_a_reduced_input_size(tmp_path):
    """input_size builds CFM's DINO backbone and pre-processor for that size, and its maps come out at it."""
    model = build_per_view_model(
        "CFM",
        {"pointmae_weights": "random", "group_size": 8, "num_group": 16},
        pretrained=False,
        weights_dir=tmp_path,
        input_size=56,
    )
    backbone = model.model.feature_extractors.extractors.rgb_backbone

    assert tuple(backbone.patch_embed.img_size) == (56, 56)
    assert backbone.pos_embed.shape[1] == 1 + (56 // 8) ** 2
    assert model.pre_processor.transform.size == [56, 56]
    assert (tmp_path / "pointmae_random_g8_n16.pth").is_file()

    image = torch.rand(1, 3, 56, 56)
    xyz = torch.rand(1, 3, 56, 56) + 0.5
    xyz[..., :4] = 0
    model.eval()
    with torch.no_grad():
        output = model.model(image, xyz)
    assert output.anomaly_map.shape[-2:] == (56, 56)
    assert torch.isfinite(output.anomaly_map).all()


def test_efficient_ad_missing_downloads(tmp_path, monkeypatch):
    import anomalib.utils.path

    monkeypatch.setattr(anomalib.utils.path, "get_pretrained_weights_dir", lambda: tmp_path / "pre_trained")
    images = write_penalty_images(tmp_path / "images", count=2, size=32)

    with pytest.raises(BaselineWeightsError, match="imagenette2.tgz") as raised:
        build_per_view_model("EfficientAd", {"imagenet_dir": str(tmp_path / "missing")}, pretrained=False)
    assert str(tmp_path / "missing") in str(raised.value)

    with pytest.raises(BaselineWeightsError, match="efficientad_pretrained_weights.zip") as raised:
        build_per_view_model("EfficientAd", {"imagenet_dir": str(images)}, pretrained=True)
    assert str(efficient_ad_teacher_path("small")) in str(raised.value)
    assert efficient_ad_teacher_path("small").name == "pretrained_teacher_small.pth"

    with pytest.raises(ValueError, match="pretrained=False"):
        build_per_view_model("EfficientAd", {"imagenet_dir": "random"}, pretrained=True)
    with pytest.raises(ValueError, match="at least 256 pixels"):
        build_per_view_model("EfficientAd", {"imagenet_dir": str(images)}, pretrained=False, input_size=112)


def test_penalty_images_image_folder(tmp_path):
    from torchvision.datasets import ImageFolder

    folder = write_penalty_images(tmp_path / "images", count=3, size=24)
    first = (folder / "textures" / "texture_000.png").read_bytes()

    dataset = ImageFolder(folder)
    assert len(dataset) == 3
    assert dataset[0][0].size == (24, 24)
    write_penalty_images(folder, count=3, size=24, seed=1)
    assert (folder / "textures" / "texture_000.png").read_bytes() == first


def test_efficient_ad_offline_fusion(fixture_root, tmp_path):
    """EfficientAd with a random teacher and texture images trains per view; its maps become volumes."""
    from anomalib.engine import Engine

    model = build_per_view_model(
        "EfficientAd",
        {"imagenet_dir": "random", "teacher_out_channels": 16},
        pretrained=False,
        weights_dir=tmp_path,
    )
    # EfficientAd's autoencoder needs 256-pixel inputs, and its teacher statistics see the views unresized.
    datamodule = SiM3D(root=fixture_root, category="toy", image_size=256, flatten=True, normalize_image=False, **per_view_data_defaults("EfficientAd"))
    fusion = PerViewVolumeFusion(progress=False)
    engine = Engine(
        default_root_dir=tmp_path / "run",
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        max_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[fusion, *per_view_callbacks("EfficientAd")],
    )

    engine.fit(model, datamodule=datamodule)
    # Validation is off, so only the callback can have set the map quantiles (from the training views).
    assert model.model.is_set(model.model.quantiles)
    assert float(model.model.quantiles["qb_st"]) > float(model.model.quantiles["qa_st"])
    engine.test(model, datamodule=datamodule, verbose=False)

    assert datamodule.train_batch_size == 1
    assert len(fusion.view_maps) == len(fusion.volumes) * VIEWS
    assert all(torch.isfinite(volume.anomaly_maps).all() for volume in fusion.volumes)
    assert 0.0 <= fusion.metrics["instance_AUROC"] <= 1.0
    assert 0.0 <= fusion.metrics["voxel_AUPRO@1%"] <= 1.0


def test_efficient_ad_view_size_check():
    with pytest.raises(ValueError, match="image_size: 256"):
        check_per_view_data("EfficientAd", 112)
    check_per_view_data("EfficientAd", 256)
    check_per_view_data("Patchcore", 32)


def test_per_view_callbacks_efficient_ad():
    assert [type(callback).__name__ for callback in per_view_callbacks("anomalib.models.EfficientAd")] == ["EfficientAdTrainingQuantiles"]
    assert per_view_callbacks("Patchcore") == []


def test_per_view_batch_sizes():
    assert per_view_data_defaults("CFM") == {"train_batch_size": 1, "eval_batch_size": 1}
    assert per_view_data_defaults("anomalib.models.EfficientAd") == {"train_batch_size": 1}
    assert per_view_data_defaults("Patchcore") == {}


def test_missing_backbone_weights_message(monkeypatch):
    """Without cached weights the error names the timm model, its Hugging Face repository and the cache folder."""
    import timm

    original = timm.create_model

    def offline(*args, **kwargs):
        if kwargs.get("pretrained"):
            msg = "cannot find the requested files in the local cache"
            raise OSError(msg)
        return original(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)

    with pytest.raises(BaselineWeightsError) as raised:
        build_per_view_model("Patchcore", {"backbone": "resnet18", "layers": ["layer2"]}, pretrained=True)

    message = str(raised.value)
    assert "'resnet18'" in message
    assert "huggingface-cli download timm/resnet18" in message
    assert "models--timm--resnet18" in message
    assert "pretrained=False" in message


def test_patchcore_built_without_download():
    model = build_per_view_model("Patchcore", {"backbone": "resnet18", "layers": ["layer2"]}, pretrained=False)

    assert model.post_processor.enable_normalization is False


def _tiny(cls: type, **overrides) -> Modmap:
    arguments = {
        "image_encoder": "vit_small_patch14_dinov2",
        "depth_encoder": "vit_small_patch14_dinov2",
        "image_weights": "random",
        "depth_weights": "random",
        "image_encoder_kwargs": TINY_VIT,
        "depth_encoder_kwargs": TINY_VIT,
        "max_epochs": 1,
        "save_volumes": False,
    }
    if cls is CfmSim3d:
        # The configuration feeds the depth map, repeated to 3 channels, to an RGB encoder.
        arguments["depth_encoder_kwargs"] = {**TINY_VIT, "in_chans": 3}
    arguments.update(overrides)
    return cls(**arguments)


def test_cfm_sim3d_configuration():
    cfm = _tiny(CfmSim3d)
    modmap = _tiny(Modmap)

    assert cfm.model.pairing == "same_view"
    assert cfm.model.modulation is False
    assert cfm.model.anomaly_map_generator.aggregation == "product"
    assert modmap.model.pairing == "all"
    assert modmap.model.modulation is True
    assert cfm.model.view_pairs(3).tolist() == [[0, 0], [1, 1], [2, 2]]
    assert modmap.model.view_pairs(3).shape == (9, 2)
    assert cfm.model.depth_encoder.in_chans == 3
    assert "in_chans" not in get_encoder_config("dinov2_vitb14_reg4", "depth").timm_kwargs


def test_cfm_sim3d_defaults():
    signature = inspect.signature(CfmSim3d.__init__).parameters

    assert signature["image_encoder"].default == "dinov2_vitb14_reg4"
    assert signature["depth_encoder"].default == "dinov2_vitb14_reg4"
    assert signature["aggregation"].default == "product"
    assert "pairing" not in signature
    assert "modulation" not in signature


def test_same_view_maps_ignore_other_views():
    """With same-view pairing a view's anomaly map depends on that view only; Modmap's does not."""
    scene = smooth_scene("scene", seed=0, num_views=3, size=64)
    changed = smooth_scene("scene", seed=0, num_views=3, size=64, stain_views=(1,))

    def maps(model: Modmap, batch) -> torch.Tensor:
        features = model.model.extract_features(batch.image[0], batch.depth_map[0], batch.valid_depth[0], batch.view_index[0])
        return model.model.anomaly_maps(features)

    for cls, independent in ((CfmSim3d, True), (Modmap, False)):
        model = _tiny(cls)
        with torch.no_grad():
            for parameter in model.model.image_modulator.parameters():
                parameter.normal_(0, 0.5)
        before, after = maps(model, scene), maps(model, changed)
        assert not torch.equal(before[1], after[1])
        assert torch.equal(before[0], after[0]) is independent
