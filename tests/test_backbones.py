"""Encoder construction, token shapes and weight loading from every accepted file format."""

from __future__ import annotations

import timm
import torch

import pytest

from anomalib_modmap.backbones import (
    ENCODER_CHECKPOINT_FORMAT,
    EncoderWeightsError,
    convert_dinov2_state_dict,
    create_encoder,
    get_encoder_config,
    resolve_weights,
)

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 56}
TIMM_NAME = "vit_small_patch14_reg4_dinov2"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """Point every weights cache at empty folders so no test finds or downloads real weights."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MODMAP_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("MODMAP_WEIGHTS_DIR", raising=False)
    for name in ("DINOV2_VITB14_REG4", "DINO_DEPTH_VITS14", "VIT_SMALL_PATCH14_REG4_DINOV2"):
        monkeypatch.delenv(f"MODMAP_{name}_WEIGHTS", raising=False)


def _reference_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {**TINY, **overrides}
    model = timm.create_model(TIMM_NAME, pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs)
    # Break timm's near-zero LayerScale so that every block changes the tokens.
    for name, parameter in model.named_parameters():
        if name.endswith("gamma"):
            parameter.data.uniform_(0.5, 1.5)
    # Class token on a 2**-10 grid, so that the DINOv2 re-keying round trip is exact.
    model.cls_token.data = torch.round(model.cls_token.data * 1024) / 1024
    return model.eval()


def _reference_tokens(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_features(images)[:, model.num_prefix_tokens :]


def _to_official_dinov2(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Re-key a timm reg4 state_dict the way the official DINOv2 release stores it.

    The class token's position entry is chosen so that the round trip is exact in
    float32: both summands are small multiples of 2**-10.
    """
    official = {key: value.clone() for key, value in state_dict.items()}
    cls_token = official.pop("cls_token")
    cls_position = torch.round(torch.randn_like(cls_token) * 64) / 1024
    official["cls_token"] = cls_token - cls_position
    official["pos_embed"] = torch.cat((cls_position, official["pos_embed"]), dim=1)
    official["register_tokens"] = official.pop("reg_token")
    official["mask_token"] = torch.zeros(1, cls_token.shape[-1])
    return official


def test_named_encoders_build_with_expected_widths():
    image_encoder, _ = create_encoder("dinov2_vitb14_reg4", weights="random")
    depth_encoder, _ = create_encoder("dino_depth_vits14", weights="random")

    assert image_encoder.embed_dim == 768
    assert image_encoder.in_chans == 3
    assert depth_encoder.embed_dim == 384
    assert depth_encoder.in_chans == 1

    tokens, grid = depth_encoder(torch.rand(2, 1, 56, 42))
    assert grid == (4, 3)
    assert tokens.shape == (2, 12, 384)


def test_tokens_exclude_class_and_register_tokens(tmp_path):
    reference = _reference_model()
    path = tmp_path / "tiny.pth"
    torch.save(reference.state_dict(), path)
    encoder, _ = create_encoder(TIMM_NAME, weights=str(path), timm_kwargs=TINY)

    images = torch.randn(2, 3, 70, 42)
    tokens, grid = encoder(images)

    assert grid == (5, 3)
    assert tokens.shape == (2, 15, 32)
    assert torch.equal(tokens, _reference_tokens(reference, images))


def test_input_not_multiple_of_patch_is_resized():
    encoder, _ = create_encoder(TIMM_NAME, weights="random", timm_kwargs=TINY)
    tokens, grid = encoder(torch.randn(1, 3, 60, 30))
    assert grid == (4, 2)
    assert tokens.shape == (1, 8, 32)


def test_num_blocks_selects_block_output(tmp_path):
    reference = _reference_model()
    path = tmp_path / "tiny.pth"
    torch.save(reference.state_dict(), path)
    images = torch.randn(1, 3, 28, 28)

    first_block, _ = create_encoder(TIMM_NAME, weights=str(path), timm_kwargs=TINY, num_blocks=1, final_norm=False)
    embedding_only, _ = create_encoder(TIMM_NAME, weights=str(path), timm_kwargs=TINY, num_blocks=0, final_norm=False)

    with torch.no_grad():
        expected = reference._pos_embed(reference.patch_embed(images))
        expected_first = reference.blocks[0](expected)
    assert torch.equal(embedding_only(images)[0], expected[:, 5:])
    assert torch.equal(first_block(images)[0], expected_first[:, 5:])

    with pytest.raises(ValueError, match="num_blocks=3"):
        create_encoder(TIMM_NAME, weights="random", timm_kwargs=TINY, num_blocks=3)


def test_official_dinov2_file_loads_bit_exactly(tmp_path):
    reference = _reference_model(seed=1)
    official = _to_official_dinov2(reference.state_dict())
    assert "mask_token" in official
    assert "reg_token" not in official
    path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(official, path)

    encoder, metadata = create_encoder(TIMM_NAME, weights=str(path), timm_kwargs=TINY)
    images = torch.randn(2, 3, 42, 56)

    assert metadata == {}
    assert torch.equal(encoder(images)[0], _reference_tokens(reference, images))


def test_dinov2_conversion_renames_keys():
    tensors = {
        "mask_token": torch.zeros(1, 4),
        "cls_token": torch.ones(1, 1, 4),
        "register_tokens": torch.zeros(1, 4, 4),
        "pos_embed": torch.arange(12.0).reshape(1, 3, 4),
        "blocks.1.5.mlp.w12.weight": torch.zeros(8, 4),
        "blocks.0.mlp.w3.bias": torch.zeros(4),
        "blocks.0.ls1.gamma": torch.zeros(4),
    }
    converted = convert_dinov2_state_dict(tensors)

    assert "mask_token" not in converted
    assert converted["reg_token"].shape == (1, 4, 4)
    assert torch.equal(converted["cls_token"], torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))
    assert converted["pos_embed"].shape == (1, 2, 4)
    assert "blocks.5.mlp.fc1.weight" in converted
    assert "blocks.0.mlp.fc2.bias" in converted
    assert "blocks.0.ls1.gamma" in converted


def test_project_depth_checkpoint_loads_with_metadata(tmp_path):
    torch.manual_seed(2)
    kwargs = {**TINY, "in_chans": 1}
    reference = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True, **kwargs).eval()
    path = tmp_path / "dino_depth.pth"
    torch.save(
        {
            "format": ENCODER_CHECKPOINT_FORMAT,
            "timm_name": "vit_small_patch14_dinov2",
            "timm_kwargs": kwargs,
            "state_dict": reference.state_dict(),
            "modality": "depth",
            "depth_normalization": "minmax",
        },
        path,
    )

    encoder, metadata = create_encoder("dino_depth_vits14", weights=str(path))
    depth = torch.rand(3, 1, 28, 28)

    assert metadata["depth_normalization"] == "minmax"
    assert encoder.embed_dim == 32
    assert torch.equal(encoder(depth)[0], _reference_tokens(reference, depth))


def test_checkpoint_with_other_grid_resamples_pos_embed(tmp_path):
    reference = _reference_model(img_size=28)
    path = tmp_path / "tiny28.pth"
    torch.save(reference.state_dict(), path)

    encoder, _ = create_encoder(TIMM_NAME, weights=str(path), timm_kwargs=TINY)
    assert encoder.model.pos_embed.shape == (1, 16, 32)
    tokens, _ = encoder(torch.randn(1, 3, 28, 28))
    assert torch.isfinite(tokens).all()


def test_pretrained_found_through_weights_dir(tmp_path, monkeypatch):
    reference = _reference_model(seed=3)
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    torch.save(reference.state_dict(), weights_dir / f"{TIMM_NAME}.pth")
    monkeypatch.setenv("MODMAP_WEIGHTS_DIR", str(weights_dir))

    encoder, _ = create_encoder(TIMM_NAME, weights="pretrained", timm_kwargs=TINY)
    images = torch.randn(1, 3, 28, 28)
    assert torch.equal(encoder(images)[0], _reference_tokens(reference, images))


def test_pretrained_found_through_encoder_env_var(tmp_path, monkeypatch):
    reference = _reference_model(seed=4)
    path = tmp_path / "anywhere.pth"
    torch.save(_to_official_dinov2(reference.state_dict()), path)
    monkeypatch.setenv("MODMAP_DINOV2_VITB14_REG4_WEIGHTS", str(path))

    encoder, _ = create_encoder("dinov2_vitb14_reg4", weights="pretrained", timm_kwargs={**TINY, "depth": 2})
    images = torch.randn(1, 3, 28, 28)
    assert torch.equal(encoder(images)[0], _reference_tokens(reference, images))


def test_missing_pretrained_weights_explain_the_fix():
    with pytest.raises(EncoderWeightsError) as error:
        create_encoder("dinov2_vitb14_reg4", weights="pretrained")
    message = str(error.value)
    assert "dinov2_vitb14_reg4_pretrain.pth" in message
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth" in message
    assert "MODMAP_WEIGHTS_DIR" in message
    assert "MODMAP_DINOV2_VITB14_REG4_WEIGHTS" in message

    with pytest.raises(EncoderWeightsError, match="dino_depth_vits14.pth"):
        create_encoder("dino_depth_vits14", weights="pretrained")


def test_depth_encoder_ignores_image_weights_in_hub_cache(tmp_path, monkeypatch):
    """timm's cached vit_small_patch14_dinov2 is a 3-channel image model, never DINO-Depth weights."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    # huggingface_hub reads HF_HUB_CACHE once at import, so point its constant at the empty cache.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))

    image_model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, **TINY)
    snapshot = tmp_path / "hf-cache" / "models--timm--vit_small_patch14_dinov2.lvd142m" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    save_file(image_model.state_dict(), str(snapshot / "model.safetensors"))
    refs = snapshot.parents[1] / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc")

    # The image encoder of the same architecture does find the cached file.
    assert resolve_weights(get_encoder_config("dinov2_vits14", "image"), "pretrained") == snapshot / "model.safetensors"

    with pytest.raises(EncoderWeightsError) as error:
        resolve_weights(get_encoder_config("dino_depth_vits14", "depth"), "pretrained")
    message = str(error.value)
    assert "dino_depth_vits14.pth" in message
    assert "modmap pretrain-depth" in message
    assert "Hugging Face" not in message


def test_missing_weights_path_is_named(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(EncoderWeightsError, match="nowhere.pth"):
        create_encoder(TIMM_NAME, weights=str(missing), timm_kwargs=TINY)


@pytest.mark.parametrize(("name", "content"), [("junk.pth", b"junk\n"), ("junk.safetensors", b"not safetensors at all")])
def test_corrupt_weights_file_is_named(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(EncoderWeightsError, match=f"Failed to read encoder weights .*{name}"):
        create_encoder(TIMM_NAME, weights=str(path), timm_kwargs=TINY)


def test_weights_keyword_typo_hints_keywords(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EncoderWeightsError, match="'pretrained' or 'random'"):
        create_encoder(TIMM_NAME, weights="pretrain", timm_kwargs=TINY)


def test_weights_folder_is_rejected_as_folder(tmp_path):
    with pytest.raises(EncoderWeightsError, match="is a folder"):
        create_encoder(TIMM_NAME, weights=str(tmp_path), timm_kwargs=TINY)


def test_mismatched_weights_name_the_file(tmp_path):
    reference = _reference_model(embed_dim=64, num_heads=2)
    path = tmp_path / "wide.pth"
    torch.save(reference.state_dict(), path)
    with pytest.raises(EncoderWeightsError, match="wide.pth.*shape mismatch"):
        create_encoder(TIMM_NAME, weights=str(path), timm_kwargs=TINY)


def test_random_weights_warn():
    with pytest.warns(UserWarning, match="not meaningful"):
        create_encoder(TIMM_NAME, weights="random", timm_kwargs=TINY)


def test_unknown_encoder_name_is_rejected():
    with pytest.raises(ValueError, match="Unknown encoder 'vit_nonexistent'"):
        create_encoder("vit_nonexistent", weights="random")


def test_encoder_is_frozen_and_stays_in_eval_mode():
    encoder, _ = create_encoder(TIMM_NAME, weights="random", timm_kwargs=TINY)
    parent = torch.nn.Sequential(encoder)
    parent.train()
    assert not encoder.training
    assert not any(parameter.requires_grad for parameter in encoder.parameters())
