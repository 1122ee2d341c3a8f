"""Tests of the DINO-style encoder pretraining: losses, crops, data sources, training, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import cv2
import OpenEXR
import tifffile

from anomalib_modmap.cli import main
from anomalib_modmap.encoder_checkpoint import ENCODER_FORMAT, load_encoder, read_encoder_checkpoint
from anomalib_modmap.pretraining.crops import CropSettings, MultiCrop, resample, stack_view
from anomalib_modmap.pretraining.dataset import PretrainDataset
from anomalib_modmap.pretraining.dino_loss import DINOLoss, sinkhorn_knopp
from anomalib_modmap.pretraining.ibot_loss import IBOTPatchLoss
from anomalib_modmap.pretraining.koleo_loss import KoLeoLoss
from anomalib_modmap.pretraining.masking import block_mask
from anomalib_modmap.pretraining.module import DinoPretraining, PretrainConfig
from anomalib_modmap.pretraining.plots import read_metrics
from anomalib_modmap.pretraining.sources import find_files, read_depth, read_gray
from anomalib_modmap.pretraining.train import RunSettings, run_pretraining

TINY_CROPS = CropSettings(global_size=28, local_size=14, local_crops=2)


def tiny_config(**changes) -> PretrainConfig:
    """A two-block ViT with 7-pixel patches and small heads: a training step takes milliseconds."""
    settings = dict(
        img_size=28,
        model_overrides={"patch_size": 7, "embed_dim": 32, "depth": 2, "num_heads": 2},
        head_prototypes=64,
        head_hidden_dim=64,
        head_bottleneck_dim=16,
        max_steps=24,
        lr=5e-4,
        drop_path_rate=0.0,
    )
    settings.update(changes)
    return PretrainConfig(**settings)


def synthetic_depth(rng: np.random.Generator, height: int = 48, width: int = 64) -> np.ndarray:
    """A tilted plane with spherical bumps and 5 % invalid pixels, in metres."""
    rows, cols = np.mgrid[0:height, 0:width]
    depth = 0.8 + 0.003 * rows + 0.002 * cols * rng.uniform(-1, 1)
    for _ in range(3):
        center_row, center_col, radius = rng.uniform(8, height - 8), rng.uniform(8, width - 8), rng.uniform(4, 12)
        depth = depth - np.sqrt(np.clip(radius**2 - (rows - center_row) ** 2 - (cols - center_col) ** 2, 0, None)) / 100
    depth[rng.random(depth.shape) < 0.05] = 0.0
    return depth.astype(np.float32)


@pytest.fixture
def depth_folder(tmp_path: Path) -> Path:
    """Twelve synthetic depth maps: eight .npy files in metres and four 16-bit PNGs in millimetres."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "depth"
    folder.mkdir()
    for index in range(8):
        np.save(folder / f"view_{index}.npy", synthetic_depth(rng))
    for index in range(4):
        cv2.imwrite(str(folder / f"frame_{index}.png"), (synthetic_depth(rng) * 1000).astype(np.uint16))
    return folder


# Losses and centring


def test_sinkhorn_spreads_collapsed_teacher():
    torch.manual_seed(0)
    logits = torch.randn(64, 32) * 0.01
    logits[:, 0] += 1.0  # every sample prefers prototype 0
    log_k = math.log(32)

    plain = torch.softmax(logits / 0.04, dim=-1).mean(dim=0)
    centred = sinkhorn_knopp(logits, temperature=0.04)
    marginal = centred.mean(dim=0)

    assert -(plain * plain.clamp_min(1e-12).log()).sum() / log_k < 0.2
    assert -(marginal * marginal.log()).sum() / log_k > 0.95
    assert torch.allclose(centred.sum(dim=-1), torch.ones(64), atol=1e-5)


def test_dino_loss_skips_same_crop_pairs():
    torch.manual_seed(0)
    student_global = torch.randn(2, 3, 8)
    student_local = torch.randn(1, 3, 8)
    targets = torch.softmax(torch.randn(2, 3, 8), dim=-1)

    def cross_entropy(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -(target * torch.log_softmax(student / 0.1, dim=-1)).sum(dim=-1).mean()

    expected = (
        cross_entropy(student_global[1], targets[0])
        + cross_entropy(student_local[0], targets[0])
        + cross_entropy(student_global[0], targets[1])
        + cross_entropy(student_local[0], targets[1])
    ) / 4
    assert torch.allclose(DINOLoss(0.1)(student_global, student_local, targets), expected)


def test_ibot_loss_weights_images_equally():
    student = torch.zeros(4, 2)
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Image 0 has three masked patches and image 1 one; every per-patch loss is log 2.
    loss = IBOTPatchLoss(0.1)(student, targets, torch.tensor([0, 0, 0, 1]))
    assert torch.allclose(loss, torch.tensor(math.log(2)))
    assert IBOTPatchLoss(0.1)(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)) == 0


def test_koleo_penalises_close_neighbours():
    spread = torch.eye(4)
    crowded = torch.eye(4) * 0.01 + torch.tensor([1.0, 0, 0, 0])
    koleo = KoLeoLoss()
    assert koleo(crowded) > koleo(spread)
    assert koleo(torch.ones(1, 4)) == 0


def test_block_mask_stays_on_allowed_patches():
    torch.manual_seed(0)
    allowed = torch.ones(16, 16, dtype=torch.bool)
    allowed[:, :4] = False
    mask = block_mask(allowed, ratio=0.4)
    assert not (mask & ~allowed).any()
    assert 0.25 * allowed.sum() <= mask.sum() <= 0.45 * allowed.sum()
    assert not block_mask(allowed, ratio=0.0).any()


# Crops and data sources


def test_resample_identity_keeps_view():
    values = torch.rand(14, 14)
    valid = torch.rand(14, 14) > 0.2
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    crop, crop_valid = resample(stack_view(values, valid), identity, 14)
    assert torch.equal(crop_valid, valid)
    assert torch.allclose(crop[valid], values[valid], atol=1e-5)
    assert (crop[~valid] == 0).all()


def test_depth_crops_zero_invalid_pixels():
    torch.manual_seed(0)
    values = torch.linspace(0.5, 1.0, 64 * 64).reshape(64, 64)
    valid = torch.ones(64, 64, dtype=torch.bool)
    valid[:, :20] = False
    values = torch.where(valid, values, torch.zeros_like(values))
    settings = CropSettings(global_size=28, local_size=14, local_crops=3)

    global_crops, global_valid, local_crops = MultiCrop(settings, "depth")(values, valid)

    assert global_crops.shape == (2, 1, 28, 28)
    assert local_crops.shape == (3, 1, 14, 14)
    assert (global_crops[:, 0][~global_valid] == 0).all()
    assert global_valid.float().mean(dim=(1, 2)).min() >= settings.min_valid_fraction
    # Scale and offset jitter keep valid depth within [0.5 * 0.9 - 0.05, 1.0 * 1.1 + 0.05].
    assert global_crops[:, 0][global_valid].min() >= 0.4
    assert global_crops.max() <= 1.15


def test_image_crops_normalise_gray():
    torch.manual_seed(0)
    gray = torch.rand(40, 40)
    global_crops, _, local_crops = MultiCrop(TINY_CROPS, "image", channels=3)(gray, torch.ones(40, 40, dtype=torch.bool))
    assert global_crops.shape == (2, 3, 28, 28)
    assert torch.equal(global_crops[:, 0], global_crops[:, 2])
    assert local_crops.shape == (2, 3, 14, 14)


def test_find_files_reads_every_layout(tmp_path: Path):
    rng = np.random.default_rng(1)
    depth = synthetic_depth(rng)

    sim3d = tmp_path / "sim3d" / "bin"
    (sim3d / "bin_real" / "depth").mkdir(parents=True)
    (sim3d / "bin_bad_01" / "depth").mkdir(parents=True)
    np.save(sim3d / "bin_real" / "depth" / "C01.npy", depth)
    np.save(sim3d / "bin_bad_01" / "depth" / "C01.npy", depth)
    (sim3d / "bin_synth" / "DEPTH").mkdir(parents=True)
    synth = depth.copy()
    synth[:10] = 50.0  # background at the maximum depth
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"Z": synth}) as exr:
        exr.write(str(sim3d / "bin_synth" / "DEPTH" / "C01_depth.exr"))

    mvtec = tmp_path / "mvtec" / "bagel"
    for split in ("train/good", "validation/good", "test/crack"):
        (mvtec / split / "xyz").mkdir(parents=True)
        xyz = np.stack([np.zeros_like(depth), np.zeros_like(depth), depth], axis=-1)
        tifffile.imwrite(mvtec / split / "xyz" / "000.tiff", xyz)

    eyecandies = tmp_path / "eyecandies" / "CandyCane"
    for split in ("train/data", "test_public/data"):
        (eyecandies / split).mkdir(parents=True)
        cv2.imwrite(str(eyecandies / split / "000_depth.png"), np.full((8, 8), 32768, np.uint16))
        (eyecandies / split / "000_info_depth.yaml").write_text("normalization:\n  min: 0.5\n  max: 1.5\n")

    found = find_files([str(tmp_path / "sim3d"), str(tmp_path / "mvtec"), f"eyecandies:{tmp_path / 'eyecandies'}"], "depth")
    readers = sorted(source.reader for source in found)
    assert readers == ["exr", "eyecandies_png", "npy", "tiff_xyz", "tiff_xyz"]
    relative = [str(source.path.relative_to(tmp_path)) for source in found]
    assert not any("bad" in path or "test" in path for path in relative)

    by_reader = {source.reader: read_depth(source) for source in found}
    exr_depth, exr_valid = by_reader["exr"]
    assert not exr_valid[:10].any()
    assert exr_valid[10:].sum() == (depth[10:] > 0).sum()
    tiff_depth, tiff_valid = by_reader["tiff_xyz"]
    assert np.allclose(tiff_depth[tiff_valid], depth[depth > 0])
    eyecandies_depth, _ = by_reader["eyecandies_png"]
    assert np.allclose(eyecandies_depth, 0.5 + 32768 / 65535)


def test_find_files_rejects_bad_sources(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing"):
        find_files([str(tmp_path / "missing")], "depth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no depth files"):
        find_files([str(tmp_path / "empty")], "depth")

    cv2.imwrite(str(tmp_path / "empty" / "photo.png"), np.zeros((8, 8), np.uint8))
    (source,) = find_files([str(tmp_path / "empty")], "depth")
    with pytest.raises(ValueError, match="photo.png.*16-bit"):
        read_depth(source)


def test_read_gray_converts_colour(tmp_path: Path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 2] = 255  # pure red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.jpg"), colour)
    (source,) = find_files([str(tmp_path)], "image", pattern="*.jpg")
    gray = read_gray(source)
    assert gray.shape == (4, 4)
    assert np.allclose(gray, 0.299, atol=0.02)


def test_dataset_masks_only_valid_patches(depth_folder: Path):
    torch.manual_seed(0)
    dataset = PretrainDataset(find_files([str(depth_folder)], "depth"), "depth", TINY_CROPS, patch_size=7)
    items = [dataset[index] for index in range(len(dataset))]
    assert items[0]["masks"].shape == (2, 4, 4)
    assert all(not (item["masks"] & ~item["patch_valid"]).any() for item in items)
    assert any(item["masks"].any() for item in items)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        PretrainDataset(dataset.files, "depth", CropSettings(global_size=30), patch_size=7)


# Training, export and resume


def run_tiny(depth_folder: Path, work: Path, resume: bool = False, **changes) -> Path:
    settings = RunSettings(
        data=[str(depth_folder)],
        out=work / "depth_encoder.ckpt",
        checkpoint_dir=work / "state",
        batch_size=6,
        num_workers=0,
        accelerator="cpu",
        devices=1,
        checkpoint_every=8,
        log_every=1,
        resume=resume,
        cpu_threads=1,
    )
    return run_pretraining(tiny_config(**changes), TINY_CROPS, settings)


def test_pretraining_loss_falls_teacher_spread(depth_folder: Path, tmp_path: Path):
    torch.manual_seed(0)
    out = run_tiny(depth_folder, tmp_path)
    metrics = read_metrics(tmp_path / "state" / "logs")
    losses = metrics["loss"].dropna().to_numpy()

    assert len(losses) == 24
    assert np.isfinite(losses).all()
    assert losses[-4:].mean() < 0.8 * losses[:4].mean()
    # Floor on the entropy of the batch-mean centred teacher distribution: no prototype takes every view.
    assert metrics["teacher_marginal_entropy"].dropna().min() > 0.9
    assert (tmp_path / "state" / "loss_curves.png").stat().st_size > 10_000
    assert out.is_file()


def test_encoder_round_trip_bit_exact(depth_folder: Path, tmp_path: Path):
    torch.manual_seed(0)
    out = run_tiny(depth_folder, tmp_path, max_steps=3)
    module = DinoPretraining.load_from_checkpoint(tmp_path / "state" / "last.ckpt", map_location="cpu").eval()

    backbone, checkpoint = load_encoder(out)
    images = torch.rand(3, 1, 42, 56)
    with torch.no_grad():
        expected = module.teacher["backbone"].forward_features(images)
        features = backbone.forward_features(images)

    assert torch.equal(features, expected)
    assert checkpoint.modality == "depth"
    assert checkpoint.depth_normalization == "max"
    assert checkpoint.timm_kwargs["in_chans"] == 1
    assert checkpoint.extra["pretraining"]["steps"] == 3
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == ENCODER_FORMAT
    assert set(payload) >= {"timm_name", "timm_kwargs", "state_dict", "modality", "depth_normalization"}


def test_encoder_checkpoint_rejects_bad_files(tmp_path: Path):
    torch.save({"state_dict": {}}, tmp_path / "lightning.ckpt")
    with pytest.raises(ValueError, match="lacks the keys"):
        read_encoder_checkpoint(tmp_path / "lightning.ckpt")
    torch.save(
        {"format": ENCODER_FORMAT, "timm_name": "x", "timm_kwargs": {}, "state_dict": {}, "modality": "depth"},
        tmp_path / "no_norm.ckpt",
    )
    with pytest.raises(ValueError, match="depth_normalization"):
        read_encoder_checkpoint(tmp_path / "no_norm.ckpt")
    with pytest.raises(FileNotFoundError):
        read_encoder_checkpoint(tmp_path / "absent.ckpt")


def test_resume_continues_step_count(depth_folder: Path, tmp_path: Path):
    run_tiny(depth_folder, tmp_path, max_steps=4)
    run_tiny(depth_folder, tmp_path, resume=True, max_steps=6)
    state = torch.load(tmp_path / "state" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 6
    steps = read_metrics(tmp_path / "state" / "logs")["step"].to_numpy()
    assert steps.max() == 5
    assert read_encoder_checkpoint(tmp_path / "depth_encoder.ckpt").extra["pretraining"]["steps"] == 6


def test_cli_resume_without_state_fails(depth_folder: Path, tmp_path: Path):
    result = CliRunner().invoke(
        main,
        ["pretrain-depth", "--data", str(depth_folder), "--out", str(tmp_path / "enc.ckpt"), "--resume"],
    )
    assert result.exit_code == 1
    assert "Cannot resume" in result.output


@pytest.mark.shared_data
def test_cli_pretrains_on_real_frames(shared_data: Path, tmp_path: Path):
    common = [
        "--data", f"folder:{shared_data / 'redkitchen'}", "--max-steps", "2", "--batch-size", "2",
        "--embed-dim", "32", "--blocks", "1", "--heads", "2", "--global-size", "28", "--local-size", "14",
        "--local-crops", "1", "--prototypes", "32", "--head-hidden-dim", "32", "--head-bottleneck-dim", "8",
        "--num-workers", "0", "--accelerator", "cpu", "--cpu-threads", "1",
    ]  # fmt: skip
    for command, pattern, name in (("pretrain-depth", "*.depth.png", "depth"), ("pretrain-image", "*.color.jpg", "image")):
        out = tmp_path / f"{name}.ckpt"
        result = CliRunner().invoke(main, [command, *common, "--glob", pattern, "--out", str(out)])
        assert result.exit_code == 0, result.output
        checkpoint = read_encoder_checkpoint(out)
        assert checkpoint.modality == name
        assert checkpoint.timm_kwargs["in_chans"] == (1 if name == "depth" else 3)


def _sinkhorn_worker(rank: int, world_size: int, init_file: str, cases: list, results: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for index, logits in enumerate(cases):
            # With 5 rows, rank 1 gets none, like a rank whose batch has no masked patch.
            rows = logits[:5] if rank == 0 else logits[5:]
            results[(index, rank)] = sinkhorn_knopp(rows, temperature=0.05)
    finally:
        dist.destroy_process_group()


def test_sinkhorn_matches_across_ranks(tmp_path: Path):
    torch.manual_seed(0)
    cases = [torch.randn(9, 6), torch.randn(5, 6)]
    results = torch.multiprocessing.Manager().dict()
    # Forked workers skip re-importing this module, which keeps the test fast.
    torch.multiprocessing.start_processes(
        _sinkhorn_worker, args=(2, str(tmp_path / "init"), cases, results), nprocs=2, start_method="fork"
    )
    for index, logits in enumerate(cases):
        gathered = torch.cat([results[(index, 0)], results[(index, 1)]])
        assert torch.allclose(gathered, sinkhorn_knopp(logits, temperature=0.05), atol=1e-6)


def test_register_tokens_round_trip(depth_folder: Path, tmp_path: Path):
    torch.manual_seed(0)
    module = DinoPretraining(tiny_config(reg_tokens=2))
    dataset = PretrainDataset(find_files([str(depth_folder)], "depth"), "depth", TINY_CROPS, patch_size=module.patch_size)
    batch = torch.utils.data.default_collate([dataset[index] for index in range(4)])

    losses = module.compute_losses(batch)
    losses["loss"].backward()
    assert module.prefix_tokens == 3
    assert torch.isfinite(losses["loss"])
    assert module.mask_token.grad is not None

    backbone, checkpoint = load_encoder(module.export_encoder(tmp_path / "reg.ckpt"))
    images = torch.rand(2, 1, 28, 42)
    with torch.no_grad():
        assert torch.equal(backbone.forward_features(images), module.teacher["backbone"].forward_features(images))
    assert checkpoint.timm_kwargs["reg_tokens"] == 2


def test_modmap_backbone_loads_export(tmp_path: Path):
    from anomalib_modmap.backbones import create_encoder

    torch.manual_seed(0)
    module = DinoPretraining(tiny_config(reg_tokens=1))
    path = module.export_encoder(tmp_path / "depth_encoder.ckpt")

    encoder, metadata = create_encoder("dino_depth_vits14", weights=str(path))
    images = torch.rand(2, 1, 28, 42)
    with torch.no_grad():
        tokens, grid = encoder(images)
        expected = module.teacher["backbone"].forward_features(images)[:, module.prefix_tokens :]

    assert grid == (4, 6)
    assert torch.equal(tokens, expected)
    assert metadata["depth_normalization"] == "max"
