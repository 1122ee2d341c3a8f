"""Time the data tools: ray-cast rendering throughput and the default demo category.

Run from the repository root: ``python -m benchmarks.bench_synthesis`` (or
``python benchmarks/bench_synthesis.py`` with the root on PYTHONPATH). Prints
seconds per view and the wall time of ``make_demo_dataset`` with its defaults.
The README demo has a budget of about ten minutes on a 2-core CPU for data,
training and testing together. The data part should take well under one minute.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from sim3d_datamodule.synthesis.demo import make_demo_dataset
from sim3d_datamodule.synthesis.procedural import DEMO_OBJECTS
from sim3d_datamodule.synthesis.render import Shading, bounding_sphere, render_views
from sim3d_datamodule.synthesis.rig import make_rig


def main() -> None:
    mesh, albedo = DEMO_OBJECTS["stool"]()
    center, radius = bounding_sphere(mesh)
    for size in (192, 640):
        cameras = make_rig("ring", 8, center, radius, size, size)
        start = time.perf_counter()
        render_views(mesh, cameras, Shading(albedo=albedo))
        elapsed = time.perf_counter() - start
        print(f"render {size}x{size}: {elapsed / len(cameras):.3f} s/view")

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        make_demo_dataset(Path(root), progress=False)
        print(f"make_demo_dataset defaults (9 instances x 8 views, 192 px): {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
