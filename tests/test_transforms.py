"""Grayscale and depth normalisation."""

import pytest
import torch

from sim3d_datamodule.transforms import GRAY_MEAN, GRAY_STD, normalize_depth, normalize_gray


def test_normalize_gray_repeats_channels_and_standardises():
    image = torch.tensor([[[0.0, 50.0], [100.0, 200.0]]])
    out = normalize_gray(image)
    assert out.shape == (3, 2, 2)
    assert torch.allclose(out[0, 1, 1], torch.tensor((1.0 - GRAY_MEAN) / GRAY_STD))
    assert torch.equal(out[0], out[2])


def test_normalize_depth_max_and_minmax():
    depth = torch.tensor([[1.0, 2.0], [float("inf"), 4.0]])
    valid = torch.tensor([[True, True], [True, False]])

    by_max = normalize_depth(depth, valid, "max")
    assert by_max.tolist() == [[0.5, 1.0], [0.0, 0.0]]

    by_range = normalize_depth(depth, valid, "minmax")
    assert by_range.tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_normalize_depth_rejects_unknown_mode():
    with pytest.raises(ValueError, match="Unknown depth normalisation 'log'"):
        normalize_depth(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool), "log")
