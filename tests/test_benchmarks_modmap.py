"""The GPU check and the peer benchmark must keep running: tiny CPU smoke runs (no speed assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image-encoder", "vit_tiny_patch16_224", "--depth-encoder", "vit_tiny_patch16_224", "--cfm-encoder", "vit_tiny_patch16_224"]


def test_gpu_check_smoke_mode_runs_on_cpu():
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--image-size", "48", "--views", "3", "--repeats", "1"]
    command += ["--memory-views", "2", "--check-views", "2", *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout
    assert "bf16 check passed" in output
    for path in ("| modmap | model |", "| loop | end to end |", "| cfm | model |", "| train (cached features) |"):
        assert path in output, output
    assert output.count("| PASS |") + output.count("| FAIL |") + output.count("not evaluated") + output.count("not measured") >= 5


def test_loop_check_catches_difference(monkeypatch):
    from benchmarks import modmap_timing as mt

    args = dict(zip(("image_encoder", "depth_encoder", "cfm_encoder"), TINY[1::2], strict=True))
    models = mt.build_models(**args)
    sample = mt.synthetic_sample(3, 64, seed=5)
    assert mt.check_loop_matches(models, sample) < 2e-4
    looped, _ = mt.loop_distances(models, sample, targets=1)
    assert looped.image_to_depth.shape[0] == 1

    maps = mt.cfm_maps(models, sample)
    assert maps.shape == (3, 64, 64)
    assert torch.isfinite(maps).all()

    exact = mt.loop_distances

    def shifted(*arguments, **keywords):
        distances, foreground = exact(*arguments, **keywords)
        distances.image_to_depth[0, 0] += 1e-2
        return distances, foreground

    monkeypatch.setattr(mt, "loop_distances", shifted)
    with pytest.raises(AssertionError, match="differ"):
        mt.check_loop_matches(models, sample)
