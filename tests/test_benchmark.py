"""The benchmark grid, its report (CSV, Markdown, plots), failure reporting and rerun skipping."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from anomalib_modmap.benchmark import (
    BenchmarkConfigError,
    SiM3DBenchmarkJob,
    SiM3DBenchmarkJobGenerator,
    expand_jobs,
    load_results,
    markdown_table,
    parse_config,
    resolve_test_views,
    run_benchmark,
)
from sim3d_datamodule.testing import make_sim3d_fixture

TINY_VIT = {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 1, "img_size": 64}


def _config(root: Path, output: Path, models: list[dict]) -> dict:
    return {
        "name": "tiny",
        "output": str(output),
        "accelerator": "cpu",
        "categories": ["toy"],
        "setups": ["real2real"],
        "seeds": [0],
        "caption": "Random weights: scores are not meaningful.",
        "data": {"root": str(root), "image_size": 32},
        "models": models,
    }


def test_config_expands_grid():
    config = parse_config(
        {
            "categories": ["a", "b"],
            "setups": ["real2real", "synth2real"],
            "seeds": [0, 1],
            "data": {"root": "r", "image_size": 64},
            "models": [{"class_path": "Patchcore", "per_view": True, "data": {"image_size": 256}}, {"name": "M", "class_path": "Modmap"}],
        },
    )

    jobs = expand_jobs(config)

    assert len(jobs) == 2 * 2 * 2 * 2
    assert len({job.key for job in jobs}) == len(jobs)
    patchcore = next(job for job in jobs if job.model.name == "Patchcore")
    assert patchcore.data["image_size"] == 256
    assert patchcore.data["category"] in ("a", "b")
    assert next(job for job in jobs if job.model.name == "M").data["image_size"] == 64
    assert patchcore.model.input_size is None


def test_config_input_size():
    config = parse_config({"categories": ["a"], "models": [{"class_path": "CFM", "per_view": True, "input_size": 112}]})

    assert config.models[0].input_size == 112


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"categories": ["a"], "models": [{"class_path": "X"}], "setup": "x"}, "unknown keys"),
        ({"categories": ["a"], "models": [{"class_path": "X"}], "setups": ["real"]}, "unknown setup"),
        ({"categories": ["a"], "models": [{"class_path": "X"}, {"class_path": "X"}]}, "more than once"),
        ({"categories": ["a"], "models": [{"class_path": "X", "test_views": "2/3"}]}, "test_views"),
        ({"models": [{"class_path": "X"}]}, "categories"),
        ({"categories": ["a"], "models": [{"class_path": "X", "input_size": 112}]}, "per-view models only"),
        ({"categories": ["a"], "models": [{"class_path": "X", "per_view": True, "input_size": "big"}]}, "positive number of pixels"),
        ({"categories": ["a"], "models": []}, "empty list"),
        ({"categories": [], "models": [{"class_path": "X"}]}, "empty list"),
        ({"categories": ["a"], "seeds": [0, 0], "models": [{"class_path": "X"}]}, r"lists \[0\] more than once"),
        ({"categories": ["a"], "models": [{"class_path": "X"}, {"class_path": "X"}]}, r"model names \['X'\] appear more than once"),
        ({"categories": ["a"], "seeds": ["a"], "models": [{"class_path": "X"}]}, "whole numbers"),
        ({"categories": ["a"], "seeds": [1.7], "models": [{"class_path": "X"}]}, "whole numbers"),
        ({"categories": ["a"], "fpr_limit": "1%", "models": [{"class_path": "X"}]}, "fpr_limit"),
        ({"categories": ["a"], "fpr_limit": None, "models": [{"class_path": "X"}]}, "fpr_limit"),
        ({"categories": ["a"], "output": None, "models": [{"class_path": "X"}]}, "output must be a folder"),
        ({"categories": ["a"], "data": [1, 2], "models": [{"class_path": "X"}]}, "data must be a mapping"),
        ({"categories": ["a"], "data": {"category": "b"}, "models": [{"class_path": "X"}]}, "top-level 'categories'"),
        ({"categories": ["a"], "demo_data": "false", "models": [{"class_path": "X"}]}, "demo_data must be true or false"),
        ({"categories": ["a"], "models": [{"class_path": "X", "per_view": True, "pretrained": "false"}]}, "pretrained must be true or false"),
        ({"categories": ["a"], "models": [{"class_path": "X", "pretrained": False}]}, "per-view models only"),
        ({"categories": ["a"], "models": [{"class_path": "X", "init_args": [1]}]}, "init_args must be a mapping"),
        ({"categories": ["a"], "models": [{"class_path": "X", "trainer": "x"}]}, "trainer must be a mapping"),
        ({"categories": ["a"], "models": [{"class_path": "X", "per_view": True, "data": {"flatten": False}}]}, "always run on flattened"),
        ({"categories": ["a"], "models": [{"class_path": ""}]}, "class_path"),
        ({"categories": ["a"], "models": [{"class_path": "X", "name": "P 10%"}, {"class_path": "Y", "name": "P/10%"}]}, "both become"),
    ],
)
def test_config_errors(raw, message):
    with pytest.raises(BenchmarkConfigError, match=message):
        parse_config(raw)


def test_resolve_test_views():
    views = list(range(8))

    assert resolve_test_views("all", views) is None
    assert resolve_test_views("1/2", views) == [0, 2, 4, 6]
    assert resolve_test_views("1/4", views) == [0, 4]
    assert resolve_test_views(5, views) == [0, 1, 3, 4, 6]
    with pytest.raises(BenchmarkConfigError, match="9 views"):
        resolve_test_views(9, views)


def test_markdown_table_layout():
    frame = pd.DataFrame(
        [
            {"key": "m_a", "model": "M", "category": "a", "setup": "real2real", "seed": 0, "status": "ok", "I-AUROC": 0.5, "V-AUPRO": 0.25, "time_per_sample_s": 1.0, "peak_memory_mb": 100.0},
            {"key": "m_a1", "model": "M", "category": "a", "setup": "real2real", "seed": 1, "status": "ok", "I-AUROC": 0.7, "V-AUPRO": 0.35, "time_per_sample_s": 1.0, "peak_memory_mb": 100.0},
            {"key": "m_b", "model": "M", "category": "b", "setup": "real2real", "seed": 0, "status": "ok", "I-AUROC": 1.0, "V-AUPRO": 0.5, "time_per_sample_s": 3.0, "peak_memory_mb": 300.0},
            {"key": "p_a", "model": "P", "category": "a", "setup": "real2real", "seed": 0, "status": "failed", "error": "RuntimeError: out of\n  memory"},
            {"key": "p_b", "model": "P", "category": "b", "setup": "real2real", "seed": 0, "status": "ok", "I-AUROC": 0.25, "V-AUPRO": 0.125, "time_per_sample_s": 2.0, "peak_memory_mb": 50.0},
        ],
    )

    table = markdown_table(frame, ["a", "b"], caption="Caption text.")
    lines = table.splitlines()

    assert lines[0] == "Caption text."
    assert lines[2] == "| Method | a | b | Mean |"
    auroc = lines.index("| **I-AUROC** | | | |")
    aupro = lines.index("| **V-AUPRO@1%** | | | |")
    assert lines[auroc + 1] == "| M | 0.600 ± 0.141 | 1.000 | 0.800 |"
    assert lines[auroc + 2] == "| P | failed | 0.250 |  |"
    assert lines[aupro + 1] == "| M | 0.300 ± 0.071 | 0.500 | 0.400 |"
    assert "- `p_a`: RuntimeError: out of memory" in lines


def test_markdown_escapes_bars_in_names():
    frame = pd.DataFrame(
        [{"key": "k", "model": "A|B", "category": "a", "setup": "real2real", "seed": 0, "status": "ok", "I-AUROC": 0.5, "V-AUPRO": 0.25, "time_per_sample_s": 1.0, "peak_memory_mb": 1.0}],
    )

    lines = markdown_table(frame, ["a"]).splitlines()

    assert "| A\\|B | 0.500 | 0.500 |" in lines


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sim3d")
    make_sim3d_fixture(root, category="toy", views=3, size=(48, 64), setups=("real2real",))
    return root


def test_benchmark_runs_reports_and_skips(fixture_root, tmp_path, monkeypatch):
    """Two working models and one broken one: the broken job is reported, the others kept, reruns skip them."""
    output = tmp_path / "bench"
    models = [
        {
            "name": "Modmap",
            "class_path": "anomalib_modmap.models.Modmap",
            "init_args": {
                "image_encoder": "vit_small_patch14_dinov2",
                "depth_encoder": "vit_small_patch14_dinov2",
                "image_weights": "random",
                "depth_weights": "random",
                "image_encoder_kwargs": TINY_VIT,
                "depth_encoder_kwargs": TINY_VIT,
                "max_epochs": 1,
            },
            "test_views": 2,
        },
        {"name": "PaDiM", "class_path": "Padim", "per_view": True, "pretrained": False, "init_args": {"backbone": "resnet18", "layers": ["layer1"], "n_features": 32}},
        # Passes the checks before the run and fails in its job: the instances have 3 views.
        {"name": "Broken", "class_path": "Padim", "per_view": True, "pretrained": False, "init_args": {"backbone": "resnet18", "layers": ["layer1"]}, "test_views": 20},
    ]
    config = parse_config(_config(fixture_root, output, models))

    files = run_benchmark(config)

    frame = pd.read_csv(files["csv"])
    assert sorted(frame["model"]) == ["Broken", "Modmap", "PaDiM"]
    statuses = dict(zip(frame["model"], frame["status"], strict=True))
    assert statuses == {"Modmap": "ok", "PaDiM": "ok", "Broken": "failed"}
    ok = frame[frame["status"] == "ok"]
    assert ok["I-AUROC"].between(0, 1).all()
    assert ok["V-AUPRO"].between(0, 1).all()
    assert (ok["time_per_sample_s"] > 0).all()
    assert (ok["peak_memory_mb"] > 0).all()
    assert int(frame.set_index("model").loc["Modmap", "num_test_views"]) == 2
    assert "asks for 20 views" in frame.set_index("model").loc["Broken", "error"]

    table = files["markdown"].read_text()
    assert "| Broken | failed |" in table
    assert "Random weights" in table
    for name in ("bars_I-AUROC", "bars_V-AUPRO"):
        assert files[name].stat().st_size > 0
    assert "pro_toy_real2real" in files

    # A rerun runs only the failed job again.
    ran = []

    def record(self, task_id=None):
        ran.append(self.spec.key)
        return {"key": self.spec.key}

    monkeypatch.setattr(SiM3DBenchmarkJob, "run", record)
    run_benchmark(config)
    assert ran == [next(job.key for job in expand_jobs(config) if job.model.name == "Broken")]
    assert json.loads((output / "jobs" / f"{ran[0]}.json").read_text())["status"] == "failed"
    assert len(load_results(output)) == 3

    # Changing a model's settings runs that model's jobs again; the unchanged Modmap job is kept.
    ran.clear()
    models[1]["init_args"] = {**models[1]["init_args"], "n_features": 16}
    run_benchmark(parse_config(_config(fixture_root, output, models)))
    keys = {job.model.name: job.key for job in expand_jobs(config)}
    assert sorted(ran) == sorted([keys["PaDiM"], keys["Broken"]])


def test_parallel_runner_worker_processes(fixture_root, tmp_path):
    """anomalib's ParallelRunner (one spawned process per GPU on CUDA machines) runs the jobs; here two CPU workers."""
    from anomalib.pipelines.components.runners import ParallelRunner

    padim = {"class_path": "Padim", "per_view": True, "pretrained": False, "init_args": {"backbone": "resnet18", "layers": ["layer1"], "n_features": 16}}
    models = [{**padim, "name": "PaDiM A"}, {**padim, "name": "PaDiM B"}]
    config = parse_config(_config(fixture_root, tmp_path / "bench", models))
    generator = SiM3DBenchmarkJobGenerator(config)

    results = ParallelRunner(generator, n_jobs=2).run({})

    assert sorted(results["model"]) == ["PaDiM A", "PaDiM B"]
    assert set(results["status"]) == {"ok"}
    stored = load_results(config.output)
    assert sorted(stored["model"]) == ["PaDiM A", "PaDiM B"]
    assert stored["I-AUROC"].between(0, 1).all()


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "benchmark"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.stem)
def test_shipped_configs_parse(path):
    if path.stem.startswith("anomalib_"):
        pytest.skip("anomalib's own benchmark format; see test_anomalib_pipeline_builds_jobs")
    from anomalib_modmap.benchmark import load_config

    config = load_config(path)

    assert expand_jobs(config)


def test_anomalib_pipeline_builds_jobs():
    """anomalib's BenchmarkJobGenerator builds the project's models and SiM3D from the shipped config."""
    import yaml
    from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator
    from anomalib.pipelines.benchmark.job import BenchmarkJob

    from anomalib_modmap.registration import register

    # `anomalib benchmark` registers the project's names when anomalib.cli imports; this test
    # skips the CLI, and an earlier import of anomalib.models may have come before the hook.
    register()
    config = yaml.safe_load((CONFIGS / "anomalib_pipeline_demo.yaml").read_text())

    jobs = list(BenchmarkJobGenerator("cpu").generate_jobs(config["benchmark"], None))

    assert [type(job.model).__name__ for job in jobs] == ["Modmap", "CfmSim3d"]
    # BenchmarkJob.collect takes its columns from the first result: every job must log the same keys.
    assert len({tuple(sorted(job.flat_cfg)) for job in jobs}) == 1
    assert len(BenchmarkJob.collect([job.flat_cfg for job in jobs])) == len(jobs)
    assert {type(job.datamodule).__name__ for job in jobs} == {"SiM3D"}
    assert jobs[1].model.model.pairing == "same_view"


def test_cpu_peak_memory_above_baseline():
    """A 256 MiB tensor made in the block counts; memory held since before the baseline does not."""
    import time

    import torch

    from anomalib_modmap.benchmark.job import _PeakMemory, job_memory_baseline

    resident_before = torch.ones(32, 2**20)  # 128 MiB, resident before the job starts
    resident_before.add_(1)
    baseline = job_memory_baseline()
    with _PeakMemory(torch.device("cpu"), baseline) as quiet:
        time.sleep(0.1)
    with _PeakMemory(torch.device("cpu"), baseline) as busy:
        block = torch.ones(64, 2**20)  # 256 MiB
        block.add_(1)
        time.sleep(0.1)
        del block

    assert quiet.kind == "cpu_rss_above_start"
    assert quiet.peak_bytes < 64 * 2**20
    assert 200 * 2**20 < busy.peak_bytes < 400 * 2**20
    del resident_before


def test_report_colours_follow_the_model():
    """Every model keeps one colour across setups, and twelve models get twelve colours."""
    from anomalib_modmap.benchmark.report import model_colors

    models = [f"model {index}" for index in range(12)]
    frame = pd.DataFrame({"model": [name for name in models for _ in ("real2real", "synth2real")]})

    colors = model_colors(frame)

    assert list(colors) == models
    assert len(set(colors.values())) == 12


def test_preflight_lists_every_problem(tmp_path):
    from anomalib_modmap.benchmark.job import check_config

    models = [
        {"class_path": "Patchcor"},
        {"name": "PaDiM", "class_path": "Padim", "per_view": True, "init_args": {"bakbone": "resnet18"}, "data": {"image_sise": 64}, "trainer": {"max_epoch": 1}},
    ]
    config = parse_config({**_config(tmp_path, tmp_path / "bench", models), "data": {"root": str(tmp_path), "img_size": 32}})

    with pytest.raises(BenchmarkConfigError) as raised:
        run_benchmark(config)

    message = str(raised.value)
    assert "Did you mean Patchcore?" in message
    assert "['bakbone'] are not arguments of Padim" in message
    assert "['image_sise']" in message
    assert "['img_size']" in message
    assert "['max_epoch']" in message
    assert not (tmp_path / "bench" / "jobs").exists()


def test_cli_fails_when_a_job_fails(fixture_root, tmp_path):
    """`modmap benchmark` writes the report and exits with status 1 naming the unfinished job."""
    import yaml
    from click.testing import CliRunner

    from anomalib_modmap.cli import main

    models = [{"name": "Too many views", "class_path": "Padim", "per_view": True, "pretrained": False, "init_args": {"backbone": "resnet18", "layers": ["layer1"]}, "test_views": 20}]
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(_config(fixture_root, tmp_path / "bench", models)))

    result = CliRunner().invoke(main, ["benchmark", "--config", str(path)])

    assert result.exit_code == 1
    assert "1 of 1 benchmark jobs did not finish: Too-many-views__toy__real2real__seed0" in result.output
    assert (tmp_path / "bench" / "results.md").is_file()

    path.write_text(yaml.safe_dump({**_config(fixture_root, tmp_path / "bench", models), "seeds": [0, 0]}))
    result = CliRunner().invoke(main, ["benchmark", "--config", str(path)])
    assert result.exit_code == 1
    assert "more than once" in result.output
    assert "Traceback" not in result.output

    path.write_text("models: [a\ncategories: x\n")
    result = CliRunner().invoke(main, ["benchmark", "--config", str(path)])
    assert result.exit_code == 1
    assert f"{path}: not valid YAML at line 2" in result.output


def test_visualizer_warning_filter(caplog):
    """Per-view models run without anomalib's visualizer, so SiM3D's warning about its images is dropped, and only in the job."""
    import logging

    from anomalib_modmap.benchmark.job import _visualizer_warning_filter

    sim3d_logger = logging.getLogger("sim3d_datamodule.datamodule")
    with caplog.at_level(logging.WARNING, logger="sim3d_datamodule.datamodule"):
        _visualizer_warning_filter.install()
        sim3d_logger.warning("Dataset root %s has no folder named %s in its path", "r", "SiM3D")
        sim3d_logger.warning("another warning")
        _visualizer_warning_filter.remove()
        sim3d_logger.warning("Dataset root %s has no folder named %s in its path", "r2", "SiM3D")

    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["another warning", "Dataset root r2 has no folder named SiM3D in its path"]


def test_demo_settings_shared_with_demo_command(tmp_path, monkeypatch):
    """The benchmark generates the demo category with the settings `modmap demo` uses, synth render included."""
    import sim3d_datamodule.synthesis.demo as demo_module

    calls = []

    def record(root, category, **settings):
        calls.append(settings)
        msg = "stop after recording"
        raise RuntimeError(msg)

    monkeypatch.setattr(demo_module, "ensure_demo_dataset", record)
    config = parse_config({**_config(tmp_path, tmp_path / "bench", [{"class_path": "Padim", "per_view": True}]), "categories": ["demo_stool"], "demo_data": True})

    row = SiM3DBenchmarkJob(expand_jobs(config)[0]).run()

    assert calls == [demo_module.SHARED_DEMO_SETTINGS]
    assert demo_module.SHARED_DEMO_SETTINGS["synth"] is True
    assert "stop after recording" in row["error"]
