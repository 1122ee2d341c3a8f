"""Benchmark jobs on anomalib's pipeline runners: train, test, score anomaly volumes, store one result per job.

Each :class:`SiM3DBenchmarkJob` trains and tests one model on one category,
setup and seed, scores the anomaly volumes with V-AUPRO and I-AUROC and writes
``<output>/jobs/<key>.json`` (plus the PRO curve as ``<key>.npz``). A job
catches any exception of building, training and testing: the failure becomes a result row with ``status: failed`` and the
error, so the other jobs' results are kept. :func:`run_benchmark` hands the
jobs that have no finished result yet to anomalib's ``SerialRunner``, or to
its ``ParallelRunner`` with one worker per GPU when CUDA has several devices.
"""

from __future__ import annotations

import difflib
import json
import logging
import threading
import time
import traceback
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anomalib.pipelines.components.base import Job, JobGenerator
from anomalib.pipelines.components.runners import ParallelRunner, SerialRunner

from .config import BenchmarkConfig, JobSpec, expand_jobs, job_settings_hash, resolve_test_views

logger = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_FAILED = "failed"


def result_path(output: str | Path, key: str) -> Path:
    """Return the JSON result file of job ``key``."""
    return Path(output) / "jobs" / f"{key}.json"


def stored_result(output: str | Path, key: str) -> dict[str, Any] | None:
    """Return the stored result of job ``key``, or ``None`` when there is none or it is unreadable."""
    path = result_path(output, key)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_finished(output: str | Path, key: str, settings_hash: str | None = None) -> bool:
    """Return whether job ``key`` has a successful result, for the same settings when ``settings_hash`` is given.

    Failed jobs, and jobs whose settings changed since their result, run again.
    """
    result = stored_result(output, key)
    if result is None or result.get("status") != STATUS_OK:
        return False
    return settings_hash is None or result.get("settings_hash") == settings_hash


class _PeakMemory:
    """Peak memory during a block: CUDA allocations on a GPU, resident set size (RSS) on a CPU.

    On the CPU a thread samples ``/proc/self/statm`` every 20 ms (allocations
    shorter than the period can be missed), and ``peak_bytes`` is the peak RSS
    in the block above ``baseline_bytes``: the RSS when the job started, taken by
    :func:`job_memory_baseline` before the job built its model and data. Jobs run
    one after another in one process, so this leaves out the Python runtime and
    whatever earlier jobs left behind, and the figure does not depend on the
    order of the jobs. ``kind`` names which of the two was measured.
    """

    def __init__(self, device: torch.device, baseline_bytes: int = 0) -> None:
        self.device = device
        self.kind = "cuda_allocated" if device.type == "cuda" else "cpu_rss_above_start"
        self.baseline_bytes = baseline_bytes
        self.peak_bytes = 0
        self._peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak_rss = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak_rss = max(self._peak_rss, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak_rss = max(self._peak_rss, _rss_bytes())
        self.peak_bytes = max(0, self._peak_rss - self.baseline_bytes)


def job_memory_baseline() -> int:
    """Return the process's RSS in bytes after garbage collection and returning freed heap pages."""
    _release_free_memory()
    return _rss_bytes()


def _release_free_memory() -> None:
    """Collect garbage and, where the C library is glibc, return its free heap pages to the system."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    library = ctypes.util.find_library("c")
    if library is None:
        return
    try:
        ctypes.CDLL(library).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return


def _rss_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def _import_class(class_path: str) -> type:
    if "." not in class_path:
        import anomalib.models

        if hasattr(anomalib.models, class_path):
            return getattr(anomalib.models, class_path)
        class_path = f"anomalib_modmap.models.{class_path}"
    module_path, _, name = class_path.rpartition(".")
    return getattr(import_module(module_path), name)


def _short_names() -> list[str]:
    import anomalib.models

    import anomalib_modmap.models

    names = [name for name in getattr(anomalib.models, "__all__", []) if isinstance(getattr(anomalib.models, name, None), type)]
    return sorted({*names, *getattr(anomalib_modmap.models, "__all__", [])})


def _unknown_arguments(function: Any, names: Any) -> list[str]:  # noqa: ANN401
    import inspect

    parameters = inspect.signature(function).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return []
    return sorted(set(names) - set(parameters) - {"self"})


def check_config(config: BenchmarkConfig) -> None:
    """Check what can be checked before any job trains, and raise one error listing every problem.

    Checks that each ``class_path`` imports, that ``init_args``, ``data`` and
    ``trainer`` name real arguments of the model, of ``SiM3D`` and of Lightning's
    ``Trainer``, and that ``accelerator: cuda`` has a CUDA device. A typo then
    stops the command at once instead of failing its job hours into a grid.

    Raises:
        BenchmarkConfigError: naming each model entry, the wrong value and the fix.
    """
    from lightning.pytorch import Trainer

    from sim3d_datamodule.datamodule import SiM3D

    from .config import BenchmarkConfigError

    problems = []
    if config.accelerator == "cuda" and not torch.cuda.is_available():
        problems.append("accelerator is cuda, but torch finds no CUDA device here; use accelerator: cpu (or auto).")
    unknown_data = _unknown_arguments(SiM3D.__init__, config.data)
    if unknown_data:
        problems.append(f"data has keys {unknown_data} that SiM3D does not take.")
    for index, model in enumerate(config.models):
        where = f"models[{index}] ({model.name})"
        try:
            cls = _import_class(model.class_path)
        except (ImportError, AttributeError, ValueError):
            names = _short_names()
            close = difflib.get_close_matches(model.class_path.rsplit(".", 1)[-1], names, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            problems.append(
                f"{where}: class_path {model.class_path!r} was not found.{hint} Give a dotted class path or one of the "
                f"short names {', '.join(names)}.",
            )
            continue
        unknown = _unknown_arguments(cls.__init__, model.init_args)
        if unknown:
            problems.append(f"{where}: init_args {unknown} are not arguments of {cls.__name__}.")
        unknown_data = _unknown_arguments(SiM3D.__init__, model.data)
        if unknown_data:
            problems.append(f"{where}: data has keys {unknown_data} that SiM3D does not take.")
        unknown_trainer = _unknown_arguments(Trainer.__init__, model.trainer)
        if unknown_trainer:
            problems.append(f"{where}: trainer has keys {unknown_trainer} that Lightning's Trainer does not take.")
    if problems:
        lines = "\n".join(f"- {problem}" for problem in problems)
        msg = f"Benchmark configuration {config.name!r} has problems; nothing was run:\n{lines}"
        raise BenchmarkConfigError(msg)


class SiM3DBenchmarkJob(Job):
    """Train and test one model on one SiM3D category, setup and seed; see the module docstring.

    ``run`` returns a flat result dictionary: the job's identity (``key``,
    ``model``, ``category``, ``setup``, ``seed``, ``test_views``), ``status``
    and ``error``, the metrics ``I-AUROC`` and ``V-AUPRO`` (at the configured FPR
    limit), ``fit_s`` and ``test_s`` (seconds), ``time_per_sample_s`` (test
    seconds per test instance, data loading and fusion included),
    ``peak_memory_mb`` with ``memory_kind`` and the number of test instances.
    """

    name = "sim3d_benchmark"

    def __init__(self, spec: JobSpec) -> None:
        super().__init__()
        self.spec = spec

    def run(self, task_id: int | None = None) -> dict[str, Any]:
        """Run the job on GPU ``task_id`` (parallel runs) or the configured accelerator, and store the result."""
        spec = self.spec
        row: dict[str, Any] = {
            "key": spec.key,
            "model": spec.model.name,
            "category": spec.category,
            "setup": spec.setup,
            "seed": spec.seed,
            "test_views": str(spec.model.test_views),
            "settings_hash": job_settings_hash(spec),
            "status": STATUS_FAILED,
            "error": "",
        }
        started = time.perf_counter()
        try:
            row.update(self._train_and_test(task_id))
            row["status"] = STATUS_OK
        except Exception as error:  # noqa: BLE001 - one job's failure must not stop the benchmark
            row["error"] = f"{type(error).__name__}: {error}"
            logger.error("Benchmark job %s failed: %s\n%s", spec.key, row["error"], traceback.format_exc())  # noqa: TRY400
        finally:
            _visualizer_warning_filter.remove()
        row["job_s"] = time.perf_counter() - started
        row["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        path = result_path(spec.output, spec.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=2, default=str))
        return row

    def _train_and_test(self, task_id: int | None) -> dict[str, Any]:
        from anomalib.engine import Engine
        from lightning import seed_everything

        from anomalib_modmap.models.baselines.per_view import (
            PerViewVolumeFusion,
            build_per_view_model,
            check_per_view_data,
            per_view_callbacks,
            per_view_data_defaults,
            score_volumes,
        )
        from sim3d_datamodule.datamodule import SiM3D

        from .collect import VolumeCollector, pro_curve_of

        spec = self.spec
        baseline = job_memory_baseline()
        accelerator, devices = _placement(spec.accelerator, task_id)
        seed_everything(spec.seed, workers=True)
        if spec.demo_data and spec.category.startswith("demo_"):
            from sim3d_datamodule.synthesis.demo import SHARED_DEMO_SETTINGS, ensure_demo_dataset

            ensure_demo_dataset(Path(spec.data.get("root", "datasets/demo")), category=spec.category, **SHARED_DEMO_SETTINGS)

        if spec.model.per_view:
            # build_per_view_model turns anomalib's image visualizer off, so SiM3D's warning that its
            # per-view images would overwrite each other does not apply to these jobs.
            _visualizer_warning_filter.install()
        data_args = dict(spec.data)
        data_args.setdefault("seed", spec.seed)
        if spec.model.per_view:
            data_args["flatten"] = True
            data_args.setdefault("normalize_image", False)
            for name, value in per_view_data_defaults(spec.model.class_path).items():
                data_args.setdefault(name, value)
        datamodule = SiM3D(**data_args)
        datamodule.setup()
        test_views = resolve_test_views(spec.model.test_views, list(datamodule.view_indices))

        job_dir = Path(spec.output) / "runs" / spec.key
        if spec.model.per_view:
            check_per_view_data(spec.model.class_path, datamodule.image_size)
            model = build_per_view_model(
                spec.model.class_path,
                spec.model.init_args,
                pretrained=spec.model.pretrained,
                weights_dir=Path(spec.output) / "weights",
                input_size=spec.model.input_size,
            )
            collector = PerViewVolumeFusion(views=test_views, fpr_limit=spec.fpr_limit, progress=False)
        else:
            cls = _import_class(spec.model.class_path)
            init_args = dict(spec.model.init_args)
            init_args.setdefault("seed", spec.seed)
            init_args.setdefault("save_volumes", False)
            model = cls(**init_args)
            if test_views is not None:
                model.views = test_views
            collector = VolumeCollector()

        trainer_args = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
        if spec.model.per_view:
            # SiM3D validates on its test set; with raw scores (no normalisation statistics)
            # that pass would only repeat the test views, so per-view models skip it.
            trainer_args.update(limit_val_batches=0, num_sanity_val_steps=0)
        trainer_args.update(spec.model.trainer)
        callbacks = [collector, *(per_view_callbacks(spec.model.class_path) if spec.model.per_view else [])]
        engine = Engine(default_root_dir=job_dir, accelerator=accelerator, devices=devices, callbacks=callbacks, **trainer_args)
        fit_started = time.perf_counter()
        engine.fit(model, datamodule=datamodule)
        fit_s = time.perf_counter() - fit_started

        device = model.device
        with _PeakMemory(device, baseline) as memory:
            test_started = time.perf_counter()
            engine.test(model, datamodule=datamodule, verbose=False)
            test_s = time.perf_counter() - test_started

        volumes = collector.volumes
        metrics = score_volumes(volumes, spec.fpr_limit)
        fpr, pro = pro_curve_of(volumes, spec.fpr_limit)
        curve_path = result_path(spec.output, spec.key).with_suffix(".npz")
        curve_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(curve_path, fpr=fpr, pro=pro)
        num_instances = max(1, len(volumes))
        return {
            "I-AUROC": metrics["instance_AUROC"],
            "V-AUPRO": next(value for name, value in metrics.items() if name.startswith("voxel_AUPRO")),
            "fpr_limit": spec.fpr_limit,
            "fit_s": fit_s,
            "test_s": test_s,
            "time_per_sample_s": test_s / num_instances,
            "peak_memory_mb": memory.peak_bytes / 2**20,
            "memory_kind": memory.kind,
            "num_test_instances": len(volumes),
            "num_views": len(datamodule.view_indices),
            "num_test_views": len(test_views) if test_views is not None else len(datamodule.view_indices),
            "device": str(device),
        }

    @staticmethod
    def collect(results: list[dict[str, Any]]) -> pd.DataFrame:
        """Return the results of this run as a data frame (one row per job)."""
        return pd.DataFrame(results)

    @staticmethod
    def save(results: pd.DataFrame) -> None:
        """Rewrite the CSV, Markdown table and plots of every benchmark folder the results belong to.

        Each job already stored its own result file, so the report reads all of
        them, including jobs finished by earlier runs.
        """
        del results


class _VisualizerWarningFilter(logging.Filter):
    """Drop SiM3D's warning about colliding visualizer images, for jobs whose model has no visualizer."""

    def __init__(self) -> None:
        super().__init__()
        self.active = False

    def install(self) -> None:
        """Attach the filter to the SiM3D datamodule's logger."""
        logging.getLogger("sim3d_datamodule.datamodule").addFilter(self)
        self.active = True

    def remove(self) -> None:
        """Detach the filter."""
        logging.getLogger("sim3d_datamodule.datamodule").removeFilter(self)
        self.active = False

    def filter(self, record: logging.LogRecord) -> bool:
        """Return ``False`` for the visualizer warning, ``True`` for every other record."""
        return not str(record.msg).startswith("Dataset root %s has no folder named")


_visualizer_warning_filter = _VisualizerWarningFilter()


def _placement(accelerator: str, task_id: int | None) -> tuple[str, Any]:
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cuda":
        return "gpu", [task_id if task_id is not None else 0]
    return "cpu", 1


class SiM3DBenchmarkJobGenerator(JobGenerator):
    """Yield a :class:`SiM3DBenchmarkJob` for every job of the grid without a finished result."""

    def __init__(self, config: BenchmarkConfig, rerun: bool = False) -> None:
        self.config = config
        self.rerun = rerun
        self.skipped: list[str] = []
        self.changed: list[str] = []

    @property
    def job_class(self) -> type[SiM3DBenchmarkJob]:
        """:class:`SiM3DBenchmarkJob`."""
        return SiM3DBenchmarkJob

    def generate_jobs(self, args: dict | None = None, prev_stage_result: Any = None) -> Any:  # noqa: ANN401
        """Yield the jobs without a finished result for their current settings.

        Kept jobs are listed in ``skipped``; jobs that run again because their
        settings changed since their result are listed in ``changed``.
        """
        del args, prev_stage_result
        for spec in expand_jobs(self.config):
            settings_hash = job_settings_hash(spec)
            if not self.rerun and is_finished(spec.output, spec.key, settings_hash):
                self.skipped.append(spec.key)
                logger.info("Skipping benchmark job %s: it has a finished result for the same settings.", spec.key)
                continue
            previous = stored_result(spec.output, spec.key)
            if not self.rerun and previous is not None and previous.get("status") == STATUS_OK:
                self.changed.append(spec.key)
                logger.warning("Running benchmark job %s again: its settings changed since its stored result.", spec.key)
            yield SiM3DBenchmarkJob(spec)


def run_benchmark(config: BenchmarkConfig, rerun: bool = False) -> dict[str, Path]:
    """Run every unfinished job of ``config`` and write the report; return the report's files.

    Jobs run one after another, except with ``accelerator`` ``cuda`` (or
    ``auto`` on a CUDA machine) and more than one GPU, where anomalib's
    ``ParallelRunner`` runs one job per GPU in spawned processes.
    """
    from .report import write_report

    check_config(config)
    config.output.mkdir(parents=True, exist_ok=True)
    (config.output / "config.json").write_text(json.dumps(asdict(config), indent=2, default=str))
    generator = SiM3DBenchmarkJobGenerator(config, rerun=rerun)
    gpus = torch.cuda.device_count() if config.accelerator in ("auto", "cuda") else 0
    runner = ParallelRunner(generator, n_jobs=gpus) if gpus > 1 else SerialRunner(generator)
    runner.run({})
    if generator.skipped:
        logger.warning(
            "Kept %d finished jobs with unchanged settings (pass --rerun to repeat them): %s",
            len(generator.skipped),
            ", ".join(generator.skipped),
        )
    return write_report(config)
