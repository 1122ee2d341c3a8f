"""Side-by-side benchmarks on SiM3D data: job grid, anomalib pipeline runners, result table and plots."""

from .config import BenchmarkConfig, BenchmarkConfigError, JobSpec, ModelEntry, expand_jobs, load_config, parse_config, resolve_test_views
from .job import SiM3DBenchmarkJob, SiM3DBenchmarkJobGenerator, is_finished, run_benchmark
from .report import load_results, markdown_table, write_report

__all__ = [
    "BenchmarkConfig",
    "BenchmarkConfigError",
    "JobSpec",
    "ModelEntry",
    "SiM3DBenchmarkJob",
    "SiM3DBenchmarkJobGenerator",
    "expand_jobs",
    "is_finished",
    "load_config",
    "load_results",
    "markdown_table",
    "parse_config",
    "resolve_test_views",
    "run_benchmark",
    "write_report",
]
