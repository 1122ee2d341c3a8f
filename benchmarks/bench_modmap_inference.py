"""Time Modmap's all-pairs inference and, on CUDA, its peak memory, for several view counts.

The encoders are left out: the script feeds random tokens of the default
widths (768-d image, 384-d depth) to the modulators and mappers, which is the
part whose cost grows with the number of view pairs.

    python benchmarks/bench_modmap_inference.py --views 4 8 12 --tokens 1369 --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from anomalib_modmap.models.modmap.torch_model import ModmapModel, ViewFeatures


class _TokenWidth(nn.Module):
    """Stand-in encoder that only reports its token width."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim


def benchmark(num_views: int, num_tokens: int, device: str, pair_batch_size: int, repeats: int) -> tuple[float, float | None]:
    """Return the median seconds per instance and the peak CUDA memory in MiB (``None`` on CPU)."""
    model = ModmapModel(_TokenWidth(768), _TokenWidth(384), pair_batch_size=pair_batch_size).to(device).eval()
    side = int(num_tokens**0.5)
    features = ViewFeatures(
        image=torch.randn(num_views, num_tokens, 768, device=device),
        depth=torch.randn(num_views, num_tokens, 384, device=device),
        foreground=torch.ones(num_views, side, side, dtype=torch.bool, device=device),
        foreground_tokens=torch.ones(num_views, num_tokens, dtype=torch.bool, device=device),
        grid=(side, num_tokens // side),
        view_index=torch.arange(num_views, device=device),
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.pair_distances(features)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return sorted(timings)[len(timings) // 2], peak


def main() -> None:
    """Parse the options and print one line per view count."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, nargs="+", default=[4, 8, 12], help="view counts V to measure")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per view (1369 for 518-pixel images and 14-pixel patches)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--pair-batch-size", type=int, default=48, help="view pairs per batched step")
    parser.add_argument("--repeats", type=int, default=3, help="runs per view count; the median is reported")
    args = parser.parse_args()
    for num_views in args.views:
        seconds, peak = benchmark(num_views, args.tokens, args.device, args.pair_batch_size, args.repeats)
        memory = f", peak CUDA memory {peak:.0f} MiB" if peak is not None else ""
        print(f"V={num_views:3d} ({num_views * num_views:4d} pairs), {args.tokens} tokens, {args.device}: {seconds:.3f} s per instance{memory}")


if __name__ == "__main__":
    main()
