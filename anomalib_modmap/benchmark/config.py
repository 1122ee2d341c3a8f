"""Benchmark configuration: a YAML grid of models x categories x setups x seeds, expanded into jobs.

A configuration file looks like this (every key but ``models`` and
``categories`` has a default)::

    name: demo_cpu
    output: results/benchmark/demo_cpu   # CSV, Markdown table, plots and one folder per job
    accelerator: auto                     # auto, cpu or cuda
    categories: [demo_stool]
    setups: [real2real]                   # and/or synth2real
    seeds: [0]
    fpr_limit: 0.01                       # V-AUPRO limit
    demo_data: true                       # generate missing demo_* categories under data.root
    caption: Random encoder weights; scores are not meaningful.
    data:                                 # SiM3D arguments shared by every job
      root: datasets/demo
      image_size: 112
    models:
      - name: Modmap
        class_path: anomalib_modmap.models.Modmap
        init_args: {image_weights: random, depth_weights: random, max_epochs: 5}
        test_views: all                   # all, "1/2", "1/4" or a number of views
      - name: PatchCore
        class_path: Patchcore
        per_view: true                    # flattened data, anomaly maps fused per instance
        pretrained: false                 # pre_trained=False backbones (no download)
        input_size: 112                   # views resized to 112 x 112 before the model
        init_args: {backbone: resnet18, layers: [layer2, layer3]}
        data: {train_batch_size: 8}       # per-model SiM3D overrides
        trainer: {max_epochs: 1}          # per-model Engine arguments
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

SETUPS = ("real2real", "synth2real")
ACCELERATORS = ("auto", "cpu", "cuda")
_MODEL_KEYS = {"name", "class_path", "init_args", "per_view", "pretrained", "input_size", "data", "trainer", "test_views"}
_TOP_KEYS = {"name", "output", "accelerator", "categories", "setups", "seeds", "fpr_limit", "demo_data", "caption", "data", "models"}


class BenchmarkConfigError(ValueError):
    """Raised for an invalid benchmark configuration; the message names the key and the fix."""


@dataclass
class ModelEntry:
    """One method of the benchmark: a model class with its arguments.

    Attributes:
        name: label in the table (unique within the configuration).
        class_path: anomalib short name (``Patchcore``) or dotted class path.
        init_args: keyword arguments of the model.
        per_view: run a single-view model on flattened data and fuse its maps per instance.
        pretrained: for per-view models, ``False`` builds backbones without pretrained weights.
        input_size: for per-view models, the square size in pixels each view is resized to
            before the model; ``None`` keeps the model's default (224 for CFM).
        data: SiM3D arguments that override the shared ``data`` section for this model.
        trainer: ``Engine`` arguments (``max_epochs``, ...) for this model.
        test_views: views used at test time: ``"all"``, a fraction ``"1/k"`` or a count.
    """

    name: str
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    per_view: bool = False
    pretrained: bool = True
    input_size: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    test_views: str | int = "all"


@dataclass
class JobSpec:
    """One benchmark job: a model trained and tested on one category, setup and seed.

    Plain data only, so that a job can travel to a worker process.
    """

    key: str
    model: ModelEntry
    category: str
    setup: str
    seed: int
    data: dict[str, Any]
    output: str
    accelerator: str
    fpr_limit: float
    demo_data: bool


@dataclass
class BenchmarkConfig:
    """A parsed benchmark configuration; see the module docstring for the keys."""

    name: str
    output: Path
    models: list[ModelEntry]
    categories: list[str]
    setups: list[str] = field(default_factory=lambda: ["real2real"])
    seeds: list[int] = field(default_factory=lambda: [0])
    accelerator: str = "auto"
    fpr_limit: float = 0.01
    demo_data: bool = False
    caption: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def slugify(text: str) -> str:
    """Return ``text`` reduced to letters, digits, dots, dashes and underscores, for file names."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "job"


def job_key(model: str, category: str, setup: str, seed: int) -> str:
    """Return the key that names a job's result file; a rerun skips keys with a finished result."""
    return f"{slugify(model)}__{slugify(category)}__{setup}__seed{seed}"


def job_settings_hash(spec: JobSpec) -> str:
    """Return a short hash of everything that shapes a job's result (model entry, data, accelerator, FPR limit).

    A finished result counts for a rerun only while this hash is unchanged, so
    editing a configuration reruns the jobs it changes. The output folder is
    left out: moving results elsewhere keeps them valid.
    """
    settings = {
        "model": asdict(spec.model),
        "category": spec.category,
        "setup": spec.setup,
        "seed": spec.seed,
        "data": spec.data,
        "accelerator": spec.accelerator,
        "fpr_limit": spec.fpr_limit,
        "demo_data": spec.demo_data,
    }
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _as_list(value: Any, key: str, source: str, unique: bool = True) -> list:  # noqa: ANN401
    if value is None:
        msg = f"{source}: key '{key}' is missing; give a list."
        raise BenchmarkConfigError(msg)
    values = list(value) if isinstance(value, list | tuple) else [value]
    if not values:
        msg = f"{source}: key '{key}' is an empty list; give at least one entry."
        raise BenchmarkConfigError(msg)
    duplicates = [item for index, item in enumerate(values) if item in values[:index]]
    if unique and duplicates:
        msg = f"{source}: key '{key}' lists {duplicates} more than once; each entry would run the same jobs twice."
        raise BenchmarkConfigError(msg)
    return values


def _flag(value: Any, where: str) -> bool:  # noqa: ANN401
    """Return a YAML boolean; quoted strings such as "false" are refused rather than read as true."""
    if not isinstance(value, bool):
        msg = f"{where} must be true or false (unquoted), got {value!r}."
        raise BenchmarkConfigError(msg)
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:  # noqa: ANN401
    if value is None:
        return {}
    if not isinstance(value, dict):
        msg = f"{where} must be a mapping of names to values ({{key: value}}), got {value!r}."
        raise BenchmarkConfigError(msg)
    return dict(value)


def _integers(values: list, where: str) -> list[int]:
    if any(isinstance(value, bool) or not isinstance(value, int) for value in values):
        msg = f"{where} must be whole numbers, got {values!r}."
        raise BenchmarkConfigError(msg)
    return [int(value) for value in values]


def _input_size(value: Any, where: str, per_view: bool) -> int | None:  # noqa: ANN401
    if value is None:
        return None
    if not per_view:
        msg = f"{where}: input_size applies to per-view models only; set the image size of multi-view models with data.image_size."
        raise BenchmarkConfigError(msg)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{where}: input_size must be a positive number of pixels, got {value!r}."
        raise BenchmarkConfigError(msg)
    return value


def _reject_unknown_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(section) - allowed
    if unknown:
        msg = f"{where}: unknown keys {sorted(unknown)}; allowed are {sorted(allowed)}."
        raise BenchmarkConfigError(msg)


def _model_entry(entry: Any, where: str) -> ModelEntry:  # noqa: ANN401
    if not isinstance(entry, dict) or not entry.get("class_path") or not isinstance(entry["class_path"], str):
        msg = f"{where} needs at least 'class_path' (e.g. Patchcore or anomalib_modmap.models.Modmap)."
        raise BenchmarkConfigError(msg)
    _reject_unknown_keys(entry, _MODEL_KEYS, where)
    per_view = _flag(entry.get("per_view", False), f"{where}.per_view")
    if "pretrained" in entry and not per_view:
        msg = (
            f"{where}.pretrained applies to per-view models only; multi-view models choose their weights "
            "in init_args (image_weights, depth_weights)."
        )
        raise BenchmarkConfigError(msg)
    data = _mapping(entry.get("data"), f"{where}.data")
    if per_view and "flatten" in data:
        msg = f"{where}.data.flatten: per-view models always run on flattened SiM3D data; remove the key."
        raise BenchmarkConfigError(msg)
    if "category" in data or "setup" in data:
        msg = f"{where}.data: set categories and setups with the top-level 'categories' and 'setups' lists."
        raise BenchmarkConfigError(msg)
    return ModelEntry(
        name=str(entry.get("name") or entry["class_path"].rsplit(".", 1)[-1]),
        class_path=entry["class_path"],
        init_args=_mapping(entry.get("init_args"), f"{where}.init_args"),
        per_view=per_view,
        pretrained=_flag(entry.get("pretrained", True), f"{where}.pretrained"),
        input_size=_input_size(entry.get("input_size"), where, per_view),
        data=data,
        trainer=_mapping(entry.get("trainer"), f"{where}.trainer"),
        test_views=entry.get("test_views", "all"),
    )


def parse_config(raw: dict[str, Any], source: str = "<dict>") -> BenchmarkConfig:
    """Validate a configuration dictionary and return a :class:`BenchmarkConfig`.

    Every problem raises :class:`BenchmarkConfigError` naming the key, the value and
    the fix: wrong types (quoted booleans included), empty or repeated list entries,
    and model names that would share result files.
    """
    if not isinstance(raw, dict):
        msg = f"{source}: a benchmark configuration must be a mapping, got {type(raw).__name__}."
        raise BenchmarkConfigError(msg)
    _reject_unknown_keys(raw, _TOP_KEYS, source)

    models = [_model_entry(entry, f"{source}: models[{index}]") for index, entry in enumerate(_as_list(raw.get("models"), "models", source, unique=False))]
    names = [model.name for model in models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        msg = f"{source}: model names {duplicates} appear more than once; give each entry its own 'name'."
        raise BenchmarkConfigError(msg)
    slugs: dict[str, str] = {}
    for name in names:
        other = slugs.setdefault(slugify(name), name)
        if other != name:
            msg = (
                f"{source}: model names {other!r} and {name!r} both become {slugify(name)!r} in result file names; "
                "rename one so that they differ in letters or digits."
            )
            raise BenchmarkConfigError(msg)
    for model in models:
        parse_test_views(model.test_views)

    setups = [str(setup) for setup in _as_list(raw.get("setups", ["real2real"]), "setups", source)]
    for setup in setups:
        if setup not in SETUPS:
            msg = f"{source}: unknown setup {setup!r}; choose from {list(SETUPS)}."
            raise BenchmarkConfigError(msg)
    accelerator = str(raw.get("accelerator", "auto"))
    if accelerator not in ACCELERATORS:
        msg = f"{source}: unknown accelerator {accelerator!r}; choose from {list(ACCELERATORS)}."
        raise BenchmarkConfigError(msg)
    fpr_limit = raw.get("fpr_limit", 0.01)
    if isinstance(fpr_limit, bool) or not isinstance(fpr_limit, int | float) or not 0.0 < fpr_limit <= 1.0:
        msg = f"{source}: fpr_limit must be a number in (0, 1] (0.01 for 1%), got {fpr_limit!r}."
        raise BenchmarkConfigError(msg)
    data = _mapping(raw.get("data"), f"{source}: data")
    if "category" in data or "setup" in data:
        msg = f"{source}: data: set categories and setups with the top-level 'categories' and 'setups' lists."
        raise BenchmarkConfigError(msg)
    output = raw.get("output")
    if "output" in raw and (not isinstance(output, str) or not output.strip()):
        msg = f"{source}: output must be a folder path, got {output!r}; leave it out for results/benchmark/<name>."
        raise BenchmarkConfigError(msg)

    name = str(raw.get("name", Path(source).stem))
    return BenchmarkConfig(
        name=name,
        output=Path(output or f"results/benchmark/{slugify(name)}"),
        models=models,
        categories=[str(category) for category in _as_list(raw.get("categories"), "categories", source)],
        setups=setups,
        seeds=_integers(_as_list(raw.get("seeds", [0]), "seeds", source), f"{source}: seeds"),
        accelerator=accelerator,
        fpr_limit=float(fpr_limit),
        demo_data=_flag(raw.get("demo_data", False), f"{source}: demo_data"),
        caption=str(raw.get("caption", "")),
        data=data,
    )


def load_config(path: str | Path, output: str | Path | None = None) -> BenchmarkConfig:
    """Read a YAML benchmark configuration; ``output`` overrides its ``output`` folder."""
    path = Path(path)
    if not path.is_file():
        msg = f"Benchmark configuration {path} not found."
        raise BenchmarkConfigError(msg)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        msg = f"{path}: not valid YAML{where}: {problem}."
        raise BenchmarkConfigError(msg) from error
    config = parse_config(raw, source=str(path))
    if output is not None:
        config.output = Path(output)
    return config


def parse_test_views(test_views: str | int) -> tuple[str, float | int | None]:
    """Parse ``test_views`` into ``("all", None)``, ``("fraction", 1/k)`` or ``("count", n)``."""
    if isinstance(test_views, bool):
        msg = f"test_views must be 'all', a fraction such as '1/2' or a number of views, got {test_views!r}."
        raise BenchmarkConfigError(msg)
    if isinstance(test_views, int):
        if test_views < 1:
            msg = f"test_views must be at least 1 view, got {test_views}."
            raise BenchmarkConfigError(msg)
        return "count", test_views
    text = str(test_views).strip()
    if text == "all":
        return "all", None
    if text.isdigit():
        return parse_test_views(int(text))
    match = re.fullmatch(r"1\s*/\s*(\d+)", text)
    if match and int(match.group(1)) >= 1:
        return "fraction", 1.0 / int(match.group(1))
    msg = f"test_views must be 'all', a fraction such as '1/2' or a number of views, got {test_views!r}."
    raise BenchmarkConfigError(msg)


def resolve_test_views(test_views: str | int, view_positions: list[int]) -> list[int] | None:
    """Return the evenly spaced view positions to test among ``view_positions``; ``None`` for all.

    A fraction ``1/k`` keeps ``max(1, round(V / k))`` views; a count larger
    than the number of views raises.
    """
    kind, value = parse_test_views(test_views)
    total = len(view_positions)
    if kind == "all":
        return None
    count = max(1, round(total * value)) if kind == "fraction" else int(value)
    if count > total:
        msg = f"test_views={test_views!r} asks for {count} views, but the instances have {total} selected views."
        raise BenchmarkConfigError(msg)
    return [view_positions[index * total // count] for index in range(count)]


def expand_jobs(config: BenchmarkConfig) -> list[JobSpec]:
    """Return one :class:`JobSpec` per model x category x setup x seed, in that nesting order."""
    jobs = []
    for model in config.models:
        for category in config.categories:
            for setup in config.setups:
                for seed in config.seeds:
                    data = {**config.data, **model.data, "category": category, "setup": setup}
                    jobs.append(
                        JobSpec(
                            key=job_key(model.name, category, setup, seed),
                            model=model,
                            category=category,
                            setup=setup,
                            seed=seed,
                            data=data,
                            output=str(config.output),
                            accelerator=config.accelerator,
                            fpr_limit=config.fpr_limit,
                            demo_data=config.demo_data,
                        ),
                    )
    return jobs
