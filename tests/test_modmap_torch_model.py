"""Modmap's modulators, mappers, loss, batched view pairing and anomaly maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalib_modmap.backbones import create_encoder
from anomalib_modmap.models.modmap.anomaly_map import AnomalyMapGenerator, aggregate_distances, clean_foreground
from anomalib_modmap.models.modmap.loss import ModmapLoss, cosine_distance
from anomalib_modmap.models.modmap.torch_model import CrossModalMapper, ModmapModel, ViewModulator

TINY = {"embed_dim": 24, "depth": 1, "num_heads": 2, "img_size": 28}


@pytest.fixture
def model() -> ModmapModel:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="not meaningful"):
        image_encoder, _ = create_encoder("vit_small_patch14_dinov2", weights="random", timm_kwargs=TINY)
    with pytest.warns(UserWarning, match="not meaningful"):
        depth_encoder, _ = create_encoder(
            "vit_small_patch14_dinov2", weights="random", modality="depth", timm_kwargs={**TINY, "embed_dim": 16}
        )
    model = ModmapModel(image_encoder, depth_encoder, max_views=8, pair_batch_size=5)
    # Move the modulators away from the identity so that every pair differs.
    for parameter in (*model.image_modulator.parameters(), *model.depth_modulator.parameters()):
        parameter.data.normal_(0.0, 0.1)
    return model.eval()


def _views(num_views: int = 4, size: int = 42) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    depth = 1.0 + 0.2 * torch.rand(num_views, 1, size, size, generator=generator)
    valid = torch.zeros(num_views, 1, size, size, dtype=torch.bool)
    valid[..., 4:38, 6:36] = True
    depth = torch.where(valid, depth, torch.zeros_like(depth))
    return {
        "image": torch.randn(num_views, 3, size, size, generator=generator),
        "depth": depth,
        "valid_depth": valid,
        "view_index": torch.tensor([0, 2, 5, 7])[:num_views],
    }


def test_modulator_starts_as_identity():
    modulator = ViewModulator(channels=6, max_views=4)
    tokens = torch.randn(3, 5, 6)
    out = modulator(tokens, torch.tensor([0, 1, 3]), torch.tensor([2, 2, 0]))
    assert torch.equal(out, tokens)


def test_modulator_rejects_view_outside_one_hot():
    modulator = ViewModulator(channels=6, max_views=4)
    with pytest.raises(ValueError, match="outside \\[0, 4\\)"):
        modulator(torch.randn(1, 2, 6), torch.tensor([4]), torch.tensor([0]))


def test_mapper_hidden_width_is_mean_of_widths():
    mapper = CrossModalMapper(768, 384)
    linear_layers = [layer for layer in mapper.layers if isinstance(layer, torch.nn.Linear)]
    assert [layer.out_features for layer in linear_layers] == [576, 576, 384]
    assert mapper(torch.randn(2, 3, 768)).shape == (2, 3, 384)


def test_batched_pairs_match_per_pair_loop(model):
    features = model.extract_features(**_views())
    distances = model.pair_distances(features)

    num_views = features.image.shape[0]
    expected_i2d = torch.full_like(distances.image_to_depth, float("inf"))
    expected_d2i = torch.full_like(distances.depth_to_image, float("inf"))
    for target in range(num_views):
        for source in range(num_views):
            source_view = features.view_index[source : source + 1]
            target_view = features.view_index[target : target + 1]
            image = model.image_modulator(features.image[source : source + 1], source_view, target_view)
            depth = model.depth_modulator(features.depth[source : source + 1], source_view, target_view)
            i2d = cosine_distance(model.image_to_depth(image), features.depth[target : target + 1])[0]
            d2i = cosine_distance(model.depth_to_image(depth), features.image[target : target + 1])[0]
            expected_i2d[target] = torch.minimum(expected_i2d[target], i2d)
            expected_d2i[target] = torch.minimum(expected_d2i[target], d2i)

    torch.testing.assert_close(distances.image_to_depth, expected_i2d, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(distances.depth_to_image, expected_d2i, rtol=1e-5, atol=1e-6)
    # Each target's minimum must come from different source views, or the test proves little.
    assert not torch.allclose(distances.image_to_depth, cosine_distance(*_self_pairs(model, features)))


def _self_pairs(model: ModmapModel, features) -> tuple[torch.Tensor, torch.Tensor]:
    positions = torch.arange(features.image.shape[0])
    predicted_depth, _ = model.map_pairs(features, positions, positions)
    return predicted_depth, features.depth


def test_extract_features_shapes(model):
    features = model.extract_features(**_views())
    assert features.grid == (3, 3)
    assert features.image.shape == (4, 9, 24)
    assert features.depth.shape == (4, 9, 16)
    assert features.foreground.shape == (4, 42, 42)
    assert features.foreground_tokens.shape == (4, 9)
    assert features.foreground_tokens.any()


def test_anomaly_maps_zero_outside_foreground(model):
    views = _views()
    features = model.extract_features(**views)
    maps = model.anomaly_maps(features)
    assert maps.shape == (4, 42, 42)
    assert torch.all(maps[~features.foreground] == 0)
    assert torch.all(maps[features.foreground] > 0)


def test_pair_loss_is_differentiable(model):
    features = model.extract_features(**_views())
    source = torch.tensor([0, 1, 2, 3, 0])
    target = torch.tensor([0, 0, 1, 3, 2])
    loss = model.pair_loss(features, source, target)
    loss.backward()
    assert loss.item() > 0
    assert model.image_to_depth.layers[0].weight.grad is not None
    assert model.image_encoder.model.patch_embed.proj.weight.grad is None


def test_loss_counts_only_foreground_tokens():
    loss = ModmapLoss()
    target = torch.randn(1, 4, 3)
    predicted = target.clone()
    predicted[0, 3] = -target[0, 3]
    foreground = torch.tensor([[True, True, True, False]])
    assert loss(predicted, target, predicted, target, foreground).item() == pytest.approx(0.0, abs=1e-6)
    foreground[0, 3] = True
    assert loss(predicted, target, predicted, target, foreground).item() == pytest.approx(2 * 2.0 / 4, abs=1e-6)


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [("max", [0.5, 0.4]), ("min", [0.2, 0.1]), ("product", [0.1, 0.04]), ("mean", [0.35, 0.25])],
)
def test_aggregation_modes(aggregation, expected):
    image_to_depth = torch.tensor([0.5, 0.1])
    depth_to_image = torch.tensor([0.2, 0.4])
    result = aggregate_distances(image_to_depth, depth_to_image, aggregation)
    torch.testing.assert_close(result, torch.tensor(expected))


def test_unknown_aggregation_is_rejected():
    with pytest.raises(ValueError, match="Unknown aggregation 'median'"):
        AnomalyMapGenerator("median")


def test_foreground_keeps_largest_component_after_opening():
    valid = torch.zeros(1, 20, 20, dtype=torch.bool)
    valid[0, 2:12, 2:12] = True  # object
    valid[0, 15:18, 15:18] = True  # smaller blob, survives the opening
    valid[0, 0, 19] = True  # isolated pixel, removed by the opening
    foreground = clean_foreground(valid)
    assert foreground[0, 2:12, 2:12].all()
    assert not foreground[0, 15:18, 15:18].any()
    assert not foreground[0, 0, 19]
    assert int(foreground.sum()) == 100


def _scipy_foreground(valid):
    """Reference cleaning with scipy.ndimage: 3x3 opening, then the largest 8-connected component."""
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    cleaned = np.zeros(valid.shape, dtype=bool)
    for index, mask in enumerate(valid.numpy()):
        labels, count = ndimage.label(ndimage.binary_opening(mask, structure=structure), structure=structure)
        if count:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            cleaned[index] = labels == int(sizes.argmax())
    return torch.from_numpy(cleaned)


def test_foreground_matches_scipy_on_speckled_masks():
    generator = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    valid = ((rows - 40) ** 2 + (cols - 50) ** 2 < 30**2).expand(5, -1, -1).clone()
    valid[1:, :, :4] = True  # a valid band on the image border
    valid[2, 60:, 60:] = True  # a second large component
    valid ^= torch.rand(valid.shape, generator=generator) < 0.08
    valid[4] = False  # an empty view
    foreground = clean_foreground(valid)
    reference = _scipy_foreground(valid)
    assert foreground.dtype == torch.bool
    assert foreground[:4].sum() > 0
    assert torch.equal(foreground, reference)


def test_anomaly_map_upsamples_token_grid():
    generator = AnomalyMapGenerator("max")
    distances = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    foreground = torch.ones(1, 8, 8, dtype=torch.bool)
    maps = generator(distances, distances, (2, 2), foreground)
    assert maps.shape == (1, 8, 8)
    assert maps[0, :, 0].max() < maps[0, :, 7].min()


def test_anomaly_map_ignores_background_tokens():
    generator = AnomalyMapGenerator("max")
    # Left token column is background with a large untrained distance.
    distances = torch.tensor([[1.9, 0.2, 1.9, 0.2]])
    foreground = torch.zeros(1, 8, 8, dtype=torch.bool)
    foreground[0, :, 4:] = True
    maps = generator(distances, distances, (2, 2), foreground)
    torch.testing.assert_close(maps[0, :, 4:], torch.full((8, 4), 0.2))
    assert torch.all(maps[0, :, :4] == 0)
