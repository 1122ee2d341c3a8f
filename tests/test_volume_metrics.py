"""V-AUPRO and I-AUROC against brute-force references written here with numpy and scipy."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from anomalib_modmap.metrics import InstanceAUROC, VoxelAUPRO, label_voxel_regions
from sim3d_datamodule.geometry import VoxelGrid

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_metric_worker.py")


@dataclass
class Batch:
    """The batch fields the volume metrics read, without the rest of a MultiViewBatch."""

    pred_volume: list[torch.Tensor]
    gt_volume: list[VoxelGrid]
    gt_label: torch.Tensor


@dataclass
class Instance:
    coords: np.ndarray
    anomalous: np.ndarray
    scores: np.ndarray
    label: int


# ---------------------------------------------------------------- references


def reference_regions(coords: np.ndarray, anomalous: np.ndarray, connectivity: int) -> list[np.ndarray]:
    """Index arrays of each region, labelled with scipy.ndimage.label on a dense box."""
    if not anomalous.any():
        return []
    selected = np.flatnonzero(anomalous)
    local = coords[selected] - coords[selected].min(axis=0)
    dense = np.zeros(local.max(axis=0) + 1, dtype=bool)
    dense[tuple(local.T)] = True
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    labelled, count = ndimage.label(dense, structure=structure)
    voxel_labels = labelled[tuple(local.T)]
    return [selected[voxel_labels == region] for region in range(1, count + 1)]


def reference_aupro(instances: list[Instance], fpr_limit: float, connectivity: int = 26) -> float:
    """Every distinct score as a threshold, FPR and mean PRO by counting, trapezoid cut at the limit."""
    nominal = np.concatenate([inst.scores[~inst.anomalous] for inst in instances])
    regions = []
    for inst in instances:
        regions += [inst.scores[members] for members in reference_regions(inst.coords, inst.anomalous, connectivity)]
    every_score = np.concatenate([inst.scores for inst in instances])

    points = [(0.0, 0.0)]
    for threshold in np.unique(every_score)[::-1]:
        fpr = float(np.mean(nominal >= threshold))
        pro = float(np.mean([np.mean(region >= threshold) for region in regions]))
        points.append((fpr, pro))

    area = 0.0
    for (fpr_low, pro_low), (fpr_high, pro_high) in itertools.pairwise(points):
        if fpr_low >= fpr_limit:
            break
        if fpr_high <= fpr_limit:
            area += (fpr_high - fpr_low) * (pro_low + pro_high) / 2
        else:
            pro_cut = pro_low + (pro_high - pro_low) * (fpr_limit - fpr_low) / (fpr_high - fpr_low)
            area += (fpr_limit - fpr_low) * (pro_low + pro_cut) / 2
            break
    return area / fpr_limit


def reference_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of (anomalous, nominal) pairs ordered correctly, ties counting one half."""
    positive = scores[labels == 1]
    negative = scores[labels == 0]
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(wins / (positive.size * negative.size))


# ---------------------------------------------------------------- data


def random_instance(rng: np.random.Generator, label: int, side: int = 12, levels: int = 40) -> Instance:
    """Random listed voxels in a box, blob-shaped defects when anomalous, scores on a coarse grid (ties)."""
    occupied = rng.random((side, side, side)) < 0.5
    coords = np.argwhere(occupied)
    anomalous = np.zeros(len(coords), dtype=bool)
    if label:
        for _ in range(rng.integers(2, 5)):
            centre = rng.integers(0, side, size=3)
            radius = rng.uniform(0.8, 2.5)
            anomalous |= np.linalg.norm(coords - centre, axis=1) <= radius
        # Isolated voxels make single-voxel regions.
        anomalous[rng.choice(len(coords), size=3, replace=False)] = True
    scores = rng.integers(0, levels, size=len(coords)) / levels
    scores[anomalous] = np.minimum(scores[anomalous] + rng.uniform(0.0, 0.6, size=anomalous.sum()), 1.0)
    scores = np.round(scores * levels) / levels
    return Instance(coords + rng.integers(-50, 50, size=3), anomalous, scores, label)


def to_batch(instances: list[Instance]) -> Batch:
    return Batch(
        pred_volume=[torch.from_numpy(inst.scores) for inst in instances],
        gt_volume=[
            VoxelGrid(torch.zeros(3, dtype=torch.float64), 0.01, torch.from_numpy(inst.coords), torch.from_numpy(inst.anomalous))
            for inst in instances
        ],
        gt_label=torch.tensor([inst.label for inst in instances]),
    )


def metric_value(instances: list[Instance], fpr_limit: float = 0.01, connectivity: int = 26) -> float:
    metric = VoxelAUPRO(fpr_limit=fpr_limit, connectivity=connectivity)
    metric.update(to_batch(instances))
    return float(metric.compute())


def line_instance(points: list[tuple[int, int, int]], anomalous: list[bool], scores: list[float], label: int) -> Instance:
    return Instance(np.array(points), np.array(anomalous), np.array(scores, dtype=np.float64), label)


# ---------------------------------------------------------------- regions


@pytest.mark.parametrize("connectivity", [6, 26])
def test_regions_match_scipy_label(connectivity):
    rng = np.random.default_rng(3)
    for _ in range(5):
        coords = np.argwhere(rng.random((9, 10, 11)) < 0.3)
        labels, count = label_voxel_regions(torch.from_numpy(coords), connectivity)
        expected = reference_regions(coords, np.ones(len(coords), dtype=bool), connectivity)

        assert count == len(expected)
        for members in expected:
            assert np.unique(labels[members]).size == 1
        assert np.unique(labels).size == count


def test_regions_diagonal_touch_depends_on_connectivity():
    coords = torch.tensor([[0, 0, 0], [1, 1, 1]])
    assert label_voxel_regions(coords, 26)[1] == 1
    assert label_voxel_regions(coords, 6)[1] == 2


def test_regions_reject_repeated_voxel():
    with pytest.raises(ValueError, match="more than once"):
        label_voxel_regions(torch.tensor([[1, 2, 3], [1, 2, 3]]), 26)


# ---------------------------------------------------------------- V-AUPRO exactness


@pytest.mark.parametrize("connectivity", [26, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_matches_reference_on_random_volumes(seed, connectivity):
    rng = np.random.default_rng(seed)
    instances = [random_instance(rng, label) for label in (0, 1, 1, 0, 1)]
    for fpr_limit in (0.01, 0.05, 0.1, 0.3, 1.0):
        expected = reference_aupro(instances, fpr_limit, connectivity)
        assert metric_value(instances, fpr_limit, connectivity) == pytest.approx(expected, abs=1e-10)


def test_aupro_pruned_curve_matches_full_curve():
    from anomalib_modmap.metrics import area_up_to

    rng = np.random.default_rng(13)
    metric = VoxelAUPRO(fpr_limit=0.02)
    metric.update(to_batch([random_instance(rng, label) for label in (1, 0, 1)]))
    full_fpr, full_pro, _ = metric.curve(full=True)
    fpr, pro, _ = metric.curve()

    assert (full_fpr[-1], full_pro[-1]) == (1.0, 1.0)
    assert fpr.numel() < full_fpr.numel()
    assert fpr[-2] <= 0.02 < fpr[-1]
    torch.testing.assert_close(fpr, full_fpr[: fpr.numel()], rtol=0, atol=1e-15)
    torch.testing.assert_close(pro, full_pro[: pro.numel()], rtol=0, atol=1e-12)
    assert float(area_up_to(fpr, pro, 0.02)) == pytest.approx(float(area_up_to(full_fpr, full_pro, 0.02)), abs=1e-12)


def test_aupro_with_all_anomalous_instance():
    rng = np.random.default_rng(7)
    whole = random_instance(rng, 1)
    whole.anomalous[:] = True
    instances = [random_instance(rng, 0), whole, random_instance(rng, 1)]
    expected = reference_aupro(instances, 0.05)
    assert metric_value(instances, 0.05) == pytest.approx(expected, abs=1e-10)


def test_aupro_ties_between_nominal_and_anomalous():
    # Thresholds 0.9: FPR 0, PRO 1/2; 0.5: FPR 1/2, PRO 1; 0.1: FPR 1, PRO 1.
    instance = line_instance(
        [(0, 0, 0), (5, 0, 0), (9, 0, 0), (12, 0, 0), (13, 0, 0), (14, 0, 0)],
        [False, False, False, False, True, True],
        [0.5, 0.5, 0.1, 0.1, 0.5, 0.9],
        1,
    )
    assert metric_value([instance], 1.0) == pytest.approx(0.875)
    assert metric_value([instance], 0.25) == pytest.approx((0.25 * (0.5 + 0.75) / 2) / 0.25)
    assert reference_aupro([instance], 1.0) == pytest.approx(0.875)


def test_aupro_single_voxel_regions():
    instance = line_instance(
        [(0, 0, 0), (3, 0, 0), (6, 0, 0), (9, 0, 0), (12, 0, 0)],
        [True, True, False, False, False],
        [0.9, 0.2, 0.5, 0.4, 0.1],
        1,
    )
    # Region one is found at FPR 0, region two only after two of three nominal voxels.
    expected = reference_aupro([instance], 1.0)
    assert metric_value([instance], 1.0) == pytest.approx(expected)
    assert metric_value([instance], 0.01) == pytest.approx(0.5)


def test_aupro_diagonal_regions_six_vs_twenty_six():
    instance = line_instance(
        [(0, 0, 0), (1, 1, 1), (2, 1, 1), (3, 1, 1), (10, 10, 10), (12, 12, 12)],
        [True, True, True, True, False, False],
        [0.9, 0.1, 0.1, 0.1, 0.5, 0.5],
        1,
    )
    # With 6-connectivity the lone corner voxel is its own region: PRO 1/2 at FPR 0.
    assert metric_value([instance], 0.01, connectivity=6) == pytest.approx(0.5)
    # With 26-connectivity all four voxels form one region: PRO 1/4 at FPR 0.
    assert metric_value([instance], 0.01, connectivity=26) == pytest.approx(0.25)


def test_aupro_perfect_and_inverted():
    rng = np.random.default_rng(11)
    instances = [random_instance(rng, label) for label in (0, 1, 1)]
    for inst in instances:
        inst.scores = np.where(inst.anomalous, 1.0 + rng.random(len(inst.scores)), rng.random(len(inst.scores)))
    assert metric_value(instances) == 1.0

    for inst in instances:
        inst.scores = -inst.scores
    assert metric_value(instances) == 0.0


def test_aupro_constant_prediction_is_half_the_limit():
    rng = np.random.default_rng(5)
    instances = [random_instance(rng, label) for label in (0, 1)]
    for inst in instances:
        inst.scores = np.zeros(len(inst.scores))
    # Everything switches at once: the curve is the diagonal from (0, 0) to (1, 1).
    assert metric_value(instances, 0.01) == pytest.approx(0.005)
    assert reference_aupro(instances, 0.01) == pytest.approx(0.005)


def test_aupro_ignores_instance_without_voxels():
    rng = np.random.default_rng(9)
    instances = [random_instance(rng, label) for label in (0, 1)]
    empty = Instance(np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=bool), np.zeros(0), 0)
    assert metric_value([*instances, empty], 0.05) == pytest.approx(metric_value(instances, 0.05))


def test_aupro_regions_stay_per_instance():
    # The same voxel indices in two instances: one region each, never merged into one.
    first = line_instance([(0, 0, 0), (1, 0, 0), (5, 5, 5)], [True, True, False], [0.9, 0.9, 0.1], 1)
    second = line_instance([(0, 0, 0), (1, 0, 0), (5, 5, 5)], [True, True, False], [0.2, 0.2, 0.1], 1)
    batch = to_batch([first, second])
    metric = VoxelAUPRO()
    metric.update(batch)
    assert int(metric.num_regions) == 2
    assert float(metric.compute()) == pytest.approx(reference_aupro([first, second], 0.01))


def test_aupro_accumulates_over_batches():
    rng = np.random.default_rng(21)
    instances = [random_instance(rng, label) for label in (1, 0, 1, 0)]
    metric = VoxelAUPRO(fpr_limit=0.1)
    for start in range(0, 4, 2):
        metric.update(to_batch(instances[start : start + 2]))
    assert float(metric.compute()) == pytest.approx(reference_aupro(instances, 0.1), abs=1e-10)


def test_aupro_undefined_without_regions_warns():
    rng = np.random.default_rng(1)
    metric = VoxelAUPRO()
    metric.update(to_batch([random_instance(rng, 0)]))
    with pytest.warns(UserWarning, match="undefined"):
        assert np.isnan(float(metric.compute()))


def test_aupro_rejects_inconsistent_input():
    rng = np.random.default_rng(2)
    instance = random_instance(rng, 1)
    batch = to_batch([instance])

    short = Batch([batch.pred_volume[0][:-1]], batch.gt_volume, batch.gt_label)
    with pytest.raises(ValueError, match="scores but its grid lists"):
        VoxelAUPRO().update(short)

    mislabelled = Batch(batch.pred_volume, batch.gt_volume, torch.tensor([0]))
    with pytest.raises(ValueError, match="labelled nominal"):
        VoxelAUPRO().update(mislabelled)

    no_truth = VoxelGrid(batch.gt_volume[0].origin, 0.01, batch.gt_volume[0].coords, None)
    with pytest.raises(ValueError, match="no ground-truth anomalous mask"):
        VoxelAUPRO().update(Batch(batch.pred_volume, [no_truth], torch.tensor([1])))

    with pytest.raises(ValueError, match="missing"):
        VoxelAUPRO().update(Batch([None], batch.gt_volume, batch.gt_label))

    with_nan = batch.pred_volume[0].clone()
    with_nan[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        VoxelAUPRO().update(Batch([with_nan], batch.gt_volume, batch.gt_label))


def test_aupro_nominal_grid_without_mask_counts_as_nominal():
    rng = np.random.default_rng(4)
    nominal, anomalous = random_instance(rng, 0), random_instance(rng, 1)
    batch = to_batch([nominal, anomalous])
    batch.gt_volume[0] = VoxelGrid(batch.gt_volume[0].origin, 0.01, batch.gt_volume[0].coords, None)
    metric = VoxelAUPRO(fpr_limit=0.05)
    metric.update(batch)
    assert float(metric.compute()) == pytest.approx(reference_aupro([nominal, anomalous], 0.05), abs=1e-10)


def test_aupro_names_follow_limit():
    assert VoxelAUPRO().name == "voxel_AUPRO@1%"
    assert VoxelAUPRO(fpr_limit=0.3).name == "voxel_AUPRO@30%"
    assert VoxelAUPRO(fpr_limit=0.05, prefix="test_").name == "test_voxel_AUPRO@5%"
    with pytest.raises(ValueError, match="fpr_limit"):
        VoxelAUPRO(fpr_limit=0.0)
    with pytest.raises(ValueError, match="connectivity"):
        VoxelAUPRO(connectivity=18)


def test_aupro_figure_shows_curve():
    rng = np.random.default_rng(6)
    metric = VoxelAUPRO(fpr_limit=0.3)
    metric.update(to_batch([random_instance(rng, 1), random_instance(rng, 0)]))
    figure, title = metric.generate_figure()
    line = figure.axes[0].lines[0]
    assert "0.3" in title
    assert line.get_xdata().max() == pytest.approx(0.3)
    assert np.all(np.diff(line.get_ydata()) >= 0)


# ---------------------------------------------------------------- I-AUROC


def test_instance_auroc_matches_pairwise_reference():
    rng = np.random.default_rng(8)
    volumes = [torch.from_numpy(np.round(rng.random(rng.integers(5, 40)) * 8) / 8) for _ in range(30)]
    labels = rng.integers(0, 2, size=30)
    for score, k in (("max", 10), ("topk_mean", 4)):
        metric = InstanceAUROC(score=score, k=k)
        for start in range(0, 30, 7):
            metric.update(Batch(volumes[start : start + 7], [None] * len(volumes[start : start + 7]), torch.from_numpy(labels[start : start + 7])))
        if score == "max":
            instance_scores = np.array([float(v.max()) for v in volumes])
        else:
            instance_scores = np.array([float(np.sort(v.numpy())[::-1][:4].mean()) for v in volumes])
        assert float(metric.compute()) == pytest.approx(reference_auroc(instance_scores, labels))


def test_instance_auroc_tie_counts_half():
    metric = InstanceAUROC()
    metric.update(Batch([torch.tensor([0.2, 0.7]), torch.tensor([0.7, 0.1])], [None, None], torch.tensor([0, 1])))
    assert float(metric.compute()) == 0.5


def test_instance_auroc_names_and_errors():
    assert InstanceAUROC().name == "instance_AUROC"
    assert InstanceAUROC(score="topk_mean", k=25).name == "instance_AUROC_top25"
    with pytest.raises(ValueError, match="score must be one of"):
        InstanceAUROC(score="mean")
    with pytest.raises(ValueError, match="no voxels"):
        InstanceAUROC().update(Batch([torch.zeros(0)], [None], torch.tensor([1])))

    single_class = InstanceAUROC()
    single_class.update(Batch([torch.ones(3)], [None], torch.tensor([1])))
    with pytest.warns(UserWarning, match="undefined"):
        assert np.isnan(float(single_class.compute()))


# ---------------------------------------------------------------- anomalib integration


def test_metrics_run_in_evaluator():
    from anomalib.metrics import Evaluator

    rng = np.random.default_rng(12)
    instances = [random_instance(rng, label) for label in (0, 1, 1, 0)]
    evaluator = Evaluator(test_metrics=[VoxelAUPRO(), InstanceAUROC()])
    for start in (0, 2):
        evaluator.on_test_batch_end(None, None, None, to_batch(instances[start : start + 2]), start)

    aupro, auroc = evaluator.test_metrics
    instance_scores = np.array([inst.scores.max() for inst in instances])
    assert float(aupro.compute()) == pytest.approx(reference_aupro(instances, 0.01), abs=1e-10)
    assert float(auroc.compute()) == pytest.approx(reference_auroc(instance_scores, np.array([0, 1, 1, 0])))


def test_metrics_build_from_yaml_config():
    from anomalib.metrics import Evaluator
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--evaluator", type=Evaluator)
    config = parser.parse_string(
        """
evaluator:
  class_path: anomalib.metrics.Evaluator
  init_args:
    test_metrics:
      - class_path: anomalib_modmap.metrics.VoxelAUPRO
        init_args: {fpr_limit: 0.05, connectivity: 6}
      - class_path: anomalib_modmap.metrics.InstanceAUROC
        init_args: {score: topk_mean, k: 3}
"""
    )
    evaluator = parser.instantiate_classes(config).evaluator
    aupro, auroc = evaluator.test_metrics
    assert (aupro.name, aupro.fpr_limit, aupro.connectivity) == ("voxel_AUPRO@5%", 0.05, 6)
    assert (auroc.name, auroc.score, auroc.k) == ("instance_AUROC_top3", "topk_mean", 3)


# ---------------------------------------------------------------- distributed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_metrics_sync_across_two_processes(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": "2",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(rank), str(tmp_path / f"rank{rank}.json")],
            env={**env, "RANK": str(rank)},
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=240)
        assert worker.returncode == 0, output

    # The worker builds the same seeded instances; here one process updates with all of them.
    sys.path.insert(0, str(WORKER.parent))
    try:
        from distributed_metric_worker import build_batches
    finally:
        sys.path.remove(str(WORKER.parent))
    batches = build_batches()
    aupro, auroc = VoxelAUPRO(fpr_limit=0.05), InstanceAUROC()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in batches:
            aupro.update(batch)
            auroc.update(batch)
    expected = {"aupro": float(aupro.compute()), "auroc": float(auroc.compute())}

    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["aupro"] == pytest.approx(expected["aupro"], abs=1e-12)
        assert result["auroc"] == pytest.approx(expected["auroc"], abs=1e-12)
        assert result["num_regions"] == int(aupro.num_regions)
