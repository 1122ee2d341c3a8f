"""One-call GPU check of Modmap: bf16 against float32, then speed and memory against the per-pair loop and CFM.

Installs nothing and needs no weights files: the encoders are random-initialised,
which does not change time or memory (it does make the anomaly scores
meaningless, so only timings and numerical agreement are checked).

    python -m benchmarks.gpu_check                                    # H200: 896 px, 36 views, bf16
    python -m benchmarks.gpu_check --device cpu --image-size 112 --views 5 --memory-views 3   # smoke run

Steps:
1. bf16 check on a fresh random sample of ``--check-views`` views. Under
   bf16 autocast, Modmap's per-token distances (after the minimum over source
   views) must be within a relative L2 error of ``BF16_RELATIVE_BOUND`` of
   float32. Its anomaly maps must be within ``BF16_MAP_ATOL`` (absolute,
   ``1 - cosine`` units) everywhere. The float32 per-pair loop must match the batched pairing
   to ``LOOP_ATOL``. A failure exits with an AssertionError.
2. The table: model only and end to end (sample file read, moved to the
   device, scored, anomaly volume fused) for Modmap's batched pairing, the
   per-pair loop and the CFM SiM3D configuration; peak memory; one training
   epoch with cached against recomputed features; the ratios against the targets.

Peak memory on CUDA is ``torch.cuda.max_memory_allocated`` above the memory in
use before the run. On CPU this script does not measure it (freed blocks that
the allocator keeps would hide it); ``bench_modmap_peers sweep`` does, with a
fresh process per view count.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from benchmarks import bench_modmap_peers as peers
from benchmarks import modmap_timing as mt

# bf16 keeps 8 mantissa bits, so each rounding is off by at most 2^-9 (0.2%) relative.
# The bounds are an estimate of how far that can add up through two 12-block ViTs and the mappers.
BF16_RELATIVE_BOUND = 0.03
BF16_MAP_ATOL = 0.05
LOOP_ATOL = 2e-4


def relative_error(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    """``||approximate - exact||_2 / ||exact||_2`` in float64."""
    exact = exact.double()
    return float((approximate.double() - exact).norm() / exact.norm().clamp_min(1e-12))


def strengthen_blocks(models: mt.Models) -> None:
    """Set the LayerScale factors of random-initialised DINOv2 blocks to 0.5.

    timm starts them at 1e-5 (``init_values`` of its DINOv2 models), which
    leaves every block close to the identity, so bf16 rounding inside the
    blocks would barely reach the tokens.
    """
    for encoder in (models.modmap.image_encoder, models.modmap.depth_encoder, models.cfm_depth):
        for name, parameter in encoder.named_parameters():
            if name.endswith(("ls1.gamma", "ls2.gamma")):
                parameter.data.fill_(0.5)


def bf16_check(models: mt.Models, args: argparse.Namespace) -> dict[str, float]:
    """Compare the bf16 path with float32 on a fresh random sample; assert the bounds."""
    device = torch.device(args.device)
    sample = mt.synthetic_sample(args.check_views, args.image_size, seed=int(time.time()) % 10_000).to(device)
    sample.image = sample.image + 0.1 * torch.randn_like(sample.image)  # fresh random texture
    model = models.modmap
    results = {}
    distances, maps = {}, {}
    for bf16 in (False, True):
        with mt.autocast(device, bf16):
            features = model.extract_features(sample.image, sample.depth_map, sample.valid_depth, sample.view_index)
            distances[bf16] = model.pair_distances(features)
            maps[bf16] = model.anomaly_map_generator(distances[bf16].image_to_depth, distances[bf16].depth_to_image, features.grid, features.foreground).float()
    results["distance relative L2 error, image->depth"] = relative_error(distances[True].image_to_depth, distances[False].image_to_depth)
    results["distance relative L2 error, depth->image"] = relative_error(distances[True].depth_to_image, distances[False].depth_to_image)
    results["anomaly map max abs error"] = float((maps[True] - maps[False]).abs().max())
    results["anomaly map max (float32)"] = float(maps[False].abs().max())
    results["loop vs batched max abs difference (float32)"] = mt.check_loop_matches(models, sample, LOOP_ATOL)
    for name, value in results.items():
        print(f"  {name}: {value:.2e}")
    assert results["anomaly map max (float32)"] > 0, "float32 anomaly maps are all zero; the check would be empty"
    for direction in ("image->depth", "depth->image"):
        value = results[f"distance relative L2 error, {direction}"]
        assert value <= BF16_RELATIVE_BOUND, f"bf16 {direction} distances differ from float32 by {value:.3f} relative (bound {BF16_RELATIVE_BOUND})"
    assert results["anomaly map max abs error"] <= BF16_MAP_ATOL, f"bf16 anomaly maps differ by {results['anomaly map max abs error']:.3f} (bound {BF16_MAP_ATOL})"
    print(f"  bf16 check passed (relative L2 <= {BF16_RELATIVE_BOUND}, map error <= {BF16_MAP_ATOL})")
    return results


def memory_at(models: mt.Models, args: argparse.Namespace, views: int) -> float | None:
    """Peak CUDA memory (MiB) of Modmap's model-only pass on a ``views``-view sample."""
    device = torch.device(args.device)
    sample = mt.synthetic_sample(views, args.image_size, seed=3).to(device)
    return mt.timed(mt.model_only(models, "modmap", sample, device, args.bf16), device).peak_mib


def targets(result: dict, args: argparse.Namespace, peak: dict[int, float | None]) -> list[tuple[str, str, str]]:
    """Evaluate the targets: (name, measured, verdict) with verdict PASS, FAIL or not evaluated."""
    ratios = result["ratios"]
    times = {(row.path, row.scope): row.seconds for row in result["rows"]}
    lines = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    speedup = ratios["loop / modmap (model)"]
    required = 0.7 * args.views
    note = verdict(speedup >= required) if args.views >= 9 else "not evaluated (V < 9)"
    lines.append((f"batched vs per-pair loop >= 0.7 x V = {required:.1f}x", f"{speedup:.1f}x", note))
    lines.append(("Modmap <= 1.0 x CFM SiM3D time (model only)", f"{ratios['modmap / cfm (model)']:.2f}x", verdict(ratios["modmap / cfm (model)"] <= 1.0)))
    floor = ratios["floor: modmap / cfm matrix work"]
    lines.append(("(floor) Modmap / CFM matrix work, counted by torch", f"{floor:.2f}x", "info: 0.90 expected at 896 px, 36 views"))
    if peak.get(args.views) and peak.get(args.memory_views):
        ratio = peak[args.views] / peak[args.memory_views]
        bound = 4.5 * (args.views / args.memory_views) / 4.0
        lines.append((f"peak memory {args.views} / {args.memory_views} views <= {bound:.2f}", f"{ratio:.2f}", verdict(ratio <= bound)))
    else:
        lines.append(("peak memory ratio", "-", "not measured"))
    seconds = times["modmap", "model"]
    full = args.image_size == 896 and args.views == 36 and args.bf16 and torch.device(args.device).type == "cuda"
    lines.append(("36-view 896 px sample, model only, bf16 <= 0.3 s (H200)", f"{seconds:.3f} s", verdict(seconds <= 0.3) if full else "not evaluated (not 896 px / 36 views / bf16 / CUDA)"))
    epoch = ratios["recompute / cached epoch"]
    lines.append(("cached-feature epoch >= 5x faster", f"{epoch:.1f}x", verdict(epoch >= 5.0)))
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the bf16 check and the table; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    peers.add_common_options(parser)
    parser.set_defaults(image_size=896)
    parser.add_argument("--views", type=int, default=36, help="views per sample (default 36)")
    parser.add_argument("--memory-views", type=int, default=9, help="view count whose peak memory the full sample's is compared with (default 9)")
    parser.add_argument("--check-views", type=int, default=4, help="views of the bf16 check sample (default 4)")
    parser.add_argument("--loop-targets", type=int, default=None, help="time the per-pair loop on this many target views and scale (default: all up to 9, else 9)")
    parser.add_argument("--float32", action="store_true", help="time in float32 instead of bf16 (bf16 is the default on CUDA)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target fails")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.bf16 = device.type == "cuda" and not args.float32
    loop_targets = args.loop_targets
    if loop_targets is None and args.views > 9:
        loop_targets = 9

    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{args.views} views of {args.image_size}x{args.image_size}, {'bf16' if args.bf16 else 'float32'}; encoders random-initialised (timing only)")

    print("1. bf16 against float32")
    check_models = peers.build(args).to(device)
    strengthen_blocks(check_models)
    bf16_check(check_models, args)
    del check_models

    print("2. timings")
    result = peers.run_table(args, loop_targets, log=lambda line: print(line, flush=True))
    peak: dict[int, float | None] = {}
    if device.type == "cuda":
        peak[args.views] = next(row.peak_mib for row in result["rows"] if row.path == "modmap" and row.scope == "model")
        peak[args.memory_views] = memory_at(result["models"], args, args.memory_views)
    print(peers.format_table(result["rows"]))
    if peak:
        print(f"Modmap peak memory: {peak[args.views]:.0f} MiB at {args.views} views, {peak[args.memory_views]:.0f} MiB at {args.memory_views} views")
    else:
        print("peak memory on CPU is not measured here: run `python -m benchmarks.bench_modmap_peers sweep --device cpu` (fresh process per view count)")

    print("\n| target | measured | verdict |\n|---|---|---|")
    lines = targets(result, args, peak)
    for target, measured, verdict in lines:
        print(f"| {target} | {measured} | {verdict} |")
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    failed = any(verdict == "FAIL" for _, _, verdict in lines)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
