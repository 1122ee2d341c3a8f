"""Measure how fast the SiM3D datamodule loads multi-view test items.

Usage (from the repository root): python -m benchmarks.bench_sim3d_loading ROOT CATEGORY [--image-size 896] [--repeats 2]

Prints seconds per instance and per view for the first pass (reading files,
voxelising nominal instances without ground truth) and for later passes.
"""

from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from sim3d_datamodule.datamodule import SiM3D


def main() -> None:
    """Load every test instance ``--repeats`` times and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset root that contains the category folder")
    parser.add_argument("category", help="category folder name")
    parser.add_argument("--image-size", type=int, default=896, help="side of the square output images, pixels")
    parser.add_argument("--repeats", type=int, default=2, help="passes over the test instances")
    args = parser.parse_args()

    datamodule = SiM3D(root=args.root, category=args.category, image_size=args.image_size)
    started = time.perf_counter()
    datamodule.setup()
    print(f"setup: {time.perf_counter() - started:.2f} s for {len(datamodule.test_data)} test instances")

    for repeat in range(args.repeats):
        started = time.perf_counter()
        views = 0
        for item in tqdm(datamodule.test_data, desc=f"pass {repeat + 1}", leave=False):
            views += item.image.shape[0]
        elapsed = time.perf_counter() - started
        per_instance = elapsed / len(datamodule.test_data)
        print(f"pass {repeat + 1}: {per_instance:.3f} s per instance, {elapsed / views * 1000:.1f} ms per view ({views} views)")


if __name__ == "__main__":
    main()
