"""Weight choice of the ``modmap demo`` command."""

from __future__ import annotations

import pytest
import timm
import torch

from anomalib_modmap.demo import _weights_or_random


@pytest.fixture(autouse=True)
def _no_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MODMAP_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("MODMAP_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("MODMAP_DINOV2_VITS14_WEIGHTS", raising=False)


def test_auto_falls_back_to_random_with_warning():
    with pytest.warns(UserWarning, match="random weights"):
        assert _weights_or_random("dinov2_vits14", "image", "auto") == "random"


def test_auto_uses_pretrained_when_file_found(tmp_path, monkeypatch):
    path = tmp_path / "vits14.pth"
    torch.save(timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, depth=1).state_dict(), path)
    monkeypatch.setenv("MODMAP_DINOV2_VITS14_WEIGHTS", str(path))
    assert _weights_or_random("dinov2_vits14", "image", "auto") == "pretrained"


def test_explicit_weights_pass_through():
    assert _weights_or_random("dinov2_vits14", "image", "random") == "random"
    assert _weights_or_random("dinov2_vits14", "image", "/some/file.pth") == "/some/file.pth"
