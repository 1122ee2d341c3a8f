"""Modmap as a Lightning module on in-memory multi-view batches: training, inference, checkpoints."""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from anomalib_modmap.models import Modmap

from modmap_helpers import FakeMultiViewBatch

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 56}
NUM_VIEWS = 4
SIZE = 56


def _batch(name: str, seed: int = 0) -> FakeMultiViewBatch:
    generator = torch.Generator().manual_seed(seed)
    depth = torch.zeros(1, NUM_VIEWS, 1, SIZE, SIZE)
    depth[..., 8:48, 8:48] = 1.0 + 0.1 * torch.rand(1, NUM_VIEWS, 1, 40, 40, generator=generator)
    return FakeMultiViewBatch(
        image=torch.randn(1, NUM_VIEWS, 3, SIZE, SIZE, generator=generator),
        depth_map=depth,
        valid_depth=depth > 0,
        intrinsics=torch.eye(3, dtype=torch.float64).repeat(1, NUM_VIEWS, 1, 1),
        world_to_camera=torch.eye(4, dtype=torch.float64).repeat(1, NUM_VIEWS, 1, 1),
        view_index=torch.arange(NUM_VIEWS)[None],
        instance=[name],
    )


def _model(**overrides) -> Modmap:
    arguments = {
        "image_encoder": "vit_small_patch14_dinov2",
        "depth_encoder": "vit_small_patch14_dinov2",
        "image_weights": "random",
        "depth_weights": "random",
        "image_encoder_kwargs": TINY,
        "depth_encoder_kwargs": {**TINY, "embed_dim": 16},
        "max_epochs": 3,
        "pair_batch_size": 6,
        "evaluator": False,
        "save_volumes": False,
    }
    arguments.update(overrides)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not meaningful.*")
        return Modmap(**arguments)


def _trainer(tmp_path, max_epochs: int = 3) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )


def _loader(*batches: FakeMultiViewBatch) -> DataLoader:
    return DataLoader(list(batches), batch_size=None)


def _mapper_weights(model: Modmap) -> torch.Tensor:
    return torch.cat([parameter.detach().flatten() for parameter in model.model.image_to_depth.parameters()])


def test_fit_trains_mappers_and_runs_full_schedule(tmp_path):
    model = _model()
    initial = _mapper_weights(model).clone()
    _trainer(tmp_path).fit(model, _loader(_batch("train")))

    steps_per_epoch = math.ceil(NUM_VIEWS * NUM_VIEWS / 6)
    assert model._scheduler.total_steps == 3 * steps_per_epoch
    assert model._scheduler.last_epoch == 3 * steps_per_epoch
    assert not torch.equal(initial, _mapper_weights(model))
    encoder = model.model.image_encoder.model.patch_embed.proj.weight
    assert not encoder.requires_grad


def test_fit_is_reproducible_with_seed(tmp_path):
    first, second = _model(seed=7), _model(seed=7)
    _trainer(tmp_path).fit(first, _loader(_batch("train")))
    _trainer(tmp_path).fit(second, _loader(_batch("train")))
    assert torch.equal(_mapper_weights(first), _mapper_weights(second))


def test_training_features_are_extracted_once(tmp_path, monkeypatch):
    model = _model()
    calls = []
    original = model.model.extract_features

    def counting_extract(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.model, "extract_features", counting_extract)
    _trainer(tmp_path).fit(model, _loader(_batch("train")))
    assert len(calls) == 1


def test_test_outputs_per_view_maps_and_scores(tmp_path):
    model = _model()
    trainer = _trainer(tmp_path)
    trainer.fit(model, _loader(_batch("train")))
    batch = _batch("test", seed=1)
    output = trainer.predict(model, _loader(batch))[0]

    assert output.anomaly_map.shape == (1, NUM_VIEWS, SIZE, SIZE)
    assert output.pred_score.shape == (1,)
    assert output.pred_volume is None
    assert torch.all(output.anomaly_map[0, :, :8] == 0)
    assert output.pred_score[0] == output.anomaly_map.max()


def test_view_subset_skips_other_views(tmp_path):
    model = _model(views=[1, 3])
    trainer = _trainer(tmp_path)
    trainer.fit(model, _loader(_batch("train")))
    output = trainer.predict(model, _loader(_batch("test", seed=1)))[0]

    assert torch.all(output.anomaly_map[0, [0, 2]] == 0)
    assert torch.all(output.anomaly_map[0, [1, 3]].amax(dim=(-2, -1)) > 0)


def test_unknown_view_subset_is_rejected(tmp_path):
    model = _model(views=[9])
    with pytest.raises(ValueError, match=r"view indices \[9\]"):
        _trainer(tmp_path).predict(model, _loader(_batch("test")))


def test_partly_unknown_view_subset_is_rejected(tmp_path):
    model = _model(views=[0, 5])
    with pytest.raises(ValueError, match=r"Requested view indices \[5\]") as raised:
        _trainer(tmp_path).predict(model, _loader(_batch("test")))
    assert "[0, 1, 2, 3]" in str(raised.value)
    assert "'test'" in str(raised.value)


def test_checkpoint_reload_gives_same_maps(tmp_path):
    model = _model()
    trainer = _trainer(tmp_path)
    trainer.fit(model, _loader(_batch("train")))
    path = tmp_path / "modmap.ckpt"
    trainer.save_checkpoint(path)
    expected = trainer.predict(model, _loader(_batch("test", seed=1)))[0].anomaly_map

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not meaningful.*")
        reloaded = Modmap.load_from_checkpoint(path, evaluator=False)
    actual = _trainer(tmp_path).predict(reloaded, _loader(_batch("test", seed=1)))[0].anomaly_map

    assert reloaded.hparams.max_epochs == 3
    torch.testing.assert_close(actual, expected)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert not any(key.startswith("model.image_encoder.") for key in saved["state_dict"])
    assert any(key.startswith("model.image_to_depth.") for key in saved["state_dict"])


def test_reload_with_other_encoder_weights_warns(tmp_path, caplog):
    model = _model(seed=1)
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, _loader(_batch("train")))
    path = tmp_path / "modmap.ckpt"
    trainer.save_checkpoint(path)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not meaningful.*")
        Modmap.load_from_checkpoint(path, evaluator=False, seed=2)
    assert "encoder weights differ" in caplog.text


def test_checkpoint_with_other_architecture_names_flags(tmp_path):
    model = _model()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, _loader(_batch("train")))
    path = tmp_path / "modmap.ckpt"
    trainer.save_checkpoint(path)

    other = _model(image_encoder_kwargs={**TINY, "embed_dim": 48}, max_views=8)
    with pytest.raises(ValueError, match="trained with") as raised:
        _trainer(tmp_path).predict(other, _loader(_batch("test")), ckpt_path=path)
    message = str(raised.value)
    assert "image_encoder_kwargs" in message
    assert "--model.max_views 64" in message
    assert '"embed_dim": 32' in message
    assert "depth_encoder_kwargs" not in message


def test_overlay_range_fixed_by_training_scores(tmp_path):
    model = _model()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(model, _loader(_batch("train")))
    low, high = model.overlay_score_range
    features = next(iter(model._feature_cache.values()))
    with torch.no_grad():
        training_scores = model.model.anomaly_maps(features)[features.foreground]
    assert low == 0.0
    assert 0.0 < high <= float(training_scores.max())
    assert high >= float(training_scores.median())

    path = tmp_path / "modmap.ckpt"
    trainer.save_checkpoint(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not meaningful.*")
        reloaded = Modmap.load_from_checkpoint(path, evaluator=False)
    assert reloaded.overlay_score_range == pytest.approx((low, high))


def test_exports_use_overlay_range(tmp_path, monkeypatch):
    import anomalib_modmap.volume as volume_module

    model = _model()
    model.overlay_score_range = (0.0, 0.25)
    ranges = []
    monkeypatch.setattr(volume_module, "export_anomaly_volume", lambda *args, **kwargs: ranges.append(kwargs["score_range"]))
    features = model._extract(_batch("test"), 0)
    maps = model.model.anomaly_maps(features).float()
    model.trainer = _trainer(tmp_path)
    model._export(_batch("test"), 0, torch.arange(NUM_VIEWS), maps, features, None)
    assert ranges == [(0.0, 0.25)]


def test_cpu_runs_without_autocast():
    model = _model()
    with model._autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="Unknown aggregation 'median'"):
        _model(aggregation="median")
    with pytest.raises(ValueError, match="max_learning_rate"):
        _model(learning_rate=1e-3, max_learning_rate=1e-4)
