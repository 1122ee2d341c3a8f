"""One process of the two-process (gloo) test of the volume metrics.

Run as ``python distributed_metric_worker.py RANK OUTPUT_JSON`` with MASTER_ADDR,
MASTER_PORT and WORLD_SIZE set. Rank 0 updates with batches 0 and 2, rank 1 with
batch 1 only (nominal instances, so it has no anomalous regions). Each rank
writes the synchronised metric values to OUTPUT_JSON.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from sim3d_datamodule.geometry import VoxelGrid


@dataclass
class Batch:
    pred_volume: list[torch.Tensor]
    gt_volume: list[VoxelGrid]
    gt_label: torch.Tensor


def _instance(rng: np.random.Generator, label: int) -> tuple[torch.Tensor, VoxelGrid]:
    coords = np.argwhere(rng.random((10, 10, 10)) < 0.5)
    anomalous = np.zeros(len(coords), dtype=bool)
    if label:
        centre = rng.integers(0, 10, size=3)
        anomalous = np.linalg.norm(coords - centre, axis=1) <= 2.2
        anomalous[rng.choice(len(coords), size=2, replace=False)] = True
    scores = np.round((rng.random(len(coords)) + 0.4 * anomalous) * 25) / 25
    grid = VoxelGrid(torch.zeros(3, dtype=torch.float64), 0.01, torch.from_numpy(coords), torch.from_numpy(anomalous))
    return torch.from_numpy(scores), grid


def build_batches() -> list[Batch]:
    """Return three seeded batches: (anomalous, nominal), (nominal, nominal), (anomalous, anomalous)."""
    rng = np.random.default_rng(2026)
    batches = []
    for labels in ((1, 0), (0, 0), (1, 1)):
        instances = [_instance(rng, label) for label in labels]
        batches.append(Batch([scores for scores, _ in instances], [grid for _, grid in instances], torch.tensor(labels)))
    return batches


def main() -> None:
    rank, output = int(sys.argv[1]), sys.argv[2]
    torch.distributed.init_process_group("gloo", init_method="env://", rank=rank)

    from anomalib_modmap.metrics import InstanceAUROC, VoxelAUPRO

    batches = build_batches()
    mine = [batches[0], batches[2]] if rank == 0 else [batches[1]]
    aupro, auroc = VoxelAUPRO(fpr_limit=0.05), InstanceAUROC()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in mine:
            aupro.update(batch)
            auroc.update(batch)
        result = {"aupro": float(aupro.compute()), "auroc": float(auroc.compute())}
    # compute() restores the local state afterwards; sync() shows the gathered region count.
    aupro.sync()
    result["num_regions"] = int(aupro.num_regions)
    aupro.unsync()

    with open(output, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    # Both ranks reach this point before either tears gloo down: a rank that exits while
    # its peer is still mid-collective can abort with "terminate called without an active exception".
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    # Skip interpreter teardown: destroying gloo's C++ threads during Python's exit
    # intermittently aborts the process after the result is already written.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
