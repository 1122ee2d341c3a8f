"""Benchmark report: one CSV, a Markdown table with categories as columns, and PNG plots.

The table has an I-AUROC block and a V-AUPRO block (one row per method and
setup, one column per category, then the mean over categories), followed by
a block of test time per sample and peak memory. Several seeds give
``mean ± std``. A failed job shows ``failed`` in its cells and is listed with
its error under the table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .config import slugify

if TYPE_CHECKING:
    from .config import BenchmarkConfig

logger = logging.getLogger(__name__)

METRICS = ("I-AUROC", "V-AUPRO")


def load_results(output: str | Path, keys: list[str] | None = None) -> pd.DataFrame:
    """Read the job result files under ``<output>/jobs``; ``keys`` restricts them to one configuration's jobs."""
    rows = []
    for path in sorted((Path(output) / "jobs").glob("*.json")):
        if keys is not None and path.stem not in keys:
            continue
        try:
            rows.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            logger.warning("Ignoring the unreadable job result %s; delete it to run the job again.", path)
    frame = pd.DataFrame(rows)
    for column in (*METRICS, "time_per_sample_s", "peak_memory_mb"):
        if column not in frame:
            frame[column] = np.nan
    return frame


def _method_label(row: pd.Series, multiple_setups: bool) -> str:
    return f"{row['model']} ({row['setup']})" if multiple_setups else str(row["model"])


def _cell(values: pd.Series, statuses: pd.Series, digits: int) -> str:
    ok = values[statuses == "ok"].astype(float)
    if ok.empty:
        if (statuses == "failed").any():
            return "failed"
        return "not run" if (statuses == "not run").any() else ""
    mean = ok.mean()
    text = "nan" if np.isnan(mean) else f"{mean:.{digits}f}"
    if len(ok) > 1:
        text += f" ± {ok.std(ddof=1):.{digits}f}"
    if (statuses == "failed").any():
        text += " (some seeds failed)"
    return text


def _block(frame: pd.DataFrame, metric: str, title: str, methods: list[str], categories: list[str], digits: int) -> list[str]:
    lines = [f"| **{title}** |" + " |" * (len(categories) + 1)]
    for method in methods:
        rows = frame[frame["method"] == method]
        cells = []
        means = []
        for category in categories:
            selected = rows[rows["category"] == category]
            cells.append(_cell(selected[metric], selected["status"], digits) if not selected.empty else "")
            ok = selected[selected["status"] == "ok"][metric].astype(float)
            means.append(ok.mean() if not ok.empty else np.nan)
        mean = "" if any(np.isnan(value) for value in means) else f"{np.mean(means):.{digits}f}"
        lines.append(f"| {_escape_cell(method)} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def _escape_cell(text: str) -> str:
    """Keep a table cell in its column: Markdown reads a bare ``|`` as a cell border."""
    return str(text).replace("|", "\\|")


def _one_line(text: object) -> str:
    """Fold a multi-line error into one list item (the log keeps the full traceback)."""
    return " ".join(str(text).split())


def markdown_table(frame: pd.DataFrame, categories: list[str], caption: str = "", fpr_limit: float = 0.01) -> str:
    """Return the Markdown report of ``frame`` (rows of job results) with ``categories`` as columns."""
    frame = frame.copy()
    multiple_setups = frame["setup"].nunique() > 1 if not frame.empty else False
    frame["method"] = [_method_label(row, multiple_setups) for _, row in frame.iterrows()] if not frame.empty else []
    methods = list(dict.fromkeys(frame["method"])) if not frame.empty else []
    header = "| Method | " + " | ".join(categories) + " | Mean |"
    rule = "|---|" + "---:|" * (len(categories) + 1)
    limit = f"{fpr_limit * 100:g}%"
    lines = [header, rule]
    lines += _block(frame, "I-AUROC", "I-AUROC", methods, categories, 3)
    lines += _block(frame, "V-AUPRO", f"V-AUPRO@{limit}", methods, categories, 3)
    lines += _block(frame, "time_per_sample_s", "Test time per sample (s)", methods, categories, 2)
    lines += _block(frame, "peak_memory_mb", "Peak test memory (MiB)", methods, categories, 0)

    text = []
    if caption:
        text += [caption.strip(), ""]
    text += lines
    failed = frame[frame["status"].isin(["failed", "not run"])] if not frame.empty else frame
    if not failed.empty:
        text += ["", "Failed or unfinished jobs:", ""]
        text += [f"- `{row['key']}`: {_one_line(row['error'])}" for _, row in failed.iterrows()]
    if not frame.empty and "memory_kind" in frame:
        kinds = sorted({str(kind) for kind in frame["memory_kind"].dropna()})
        if kinds:
            text += ["", "Memory: " + ", ".join(kinds) + " (cuda_allocated: peak CUDA allocation during testing; cpu_rss_above_start: peak resident set size of the process during testing, sampled every 20 ms, above its size when the job started, before the job built its model and data)."]
    return "\n".join(text) + "\n"


SETUP_HATCHES = {"real2real": "", "synth2real": "//"}


def model_colors(frame: pd.DataFrame) -> dict[str, Any]:
    """Give each model one colour for every plot of a report; setups differ by hatching, not colour."""
    import matplotlib as mpl

    models = list(dict.fromkeys(frame["model"]))
    palette = mpl.colormaps["tab10" if len(models) <= 10 else "tab20"]
    return {model: palette(index % palette.N) for index, model in enumerate(models)}


def plot_bars(frame: pd.DataFrame, categories: list[str], metric: str, path: Path, title: str) -> Path:
    """Write grouped bars of ``metric`` (mean over seeds): one group per category, one bar per method.

    A method without any finished job keeps its legend entry, marked as having no result, and no bar.
    """
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    ok = frame[frame["status"] == "ok"]
    methods = list(dict.fromkeys(frame["method"]))
    colors = model_colors(frame)
    width = 0.8 / max(1, len(methods))
    figure, axis = plt.subplots(figsize=(max(5.0, 1.6 * len(categories) * max(1, len(methods)) * 0.5 + 2), 4))
    positions = np.arange(len(categories))
    for index, method in enumerate(methods):
        rows = ok[ok["method"] == method]
        first = frame[frame["method"] == method].iloc[0]
        heights = [rows[rows["category"] == category][metric].astype(float).mean() for category in categories]
        heights = [0.0 if np.isnan(value) else value for value in heights]
        axis.bar(
            positions + (index - (len(methods) - 1) / 2) * width,
            heights,
            width,
            label=method if not rows.empty else f"{method} (no result: failed or not run)",
            color=colors[first["model"]],
            hatch=SETUP_HATCHES.get(str(first["setup"]), ""),
            edgecolor="white",
        )
    axis.set_xticks(positions, categories)
    axis.set_ylim(0.0, 1.0)
    axis.set_ylabel(metric)
    axis.set_title(title)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_pro_curves(frame: pd.DataFrame, output: Path, category: str, setup: str, fpr_limit: float, path: Path) -> Path | None:
    """Plot each method's per-voxel PRO curve up to ``fpr_limit`` for one category and setup (lowest seed)."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    rows = frame[(frame["status"] == "ok") & (frame["category"] == category) & (frame["setup"] == setup)].sort_values("seed")
    if rows.empty:
        return None
    colors = model_colors(frame)
    figure, axis = plt.subplots(figsize=(5.5, 4))
    plotted = False
    for method, group in rows.groupby("method", sort=False):
        row = group.iloc[0]
        curve_path = output / "jobs" / f"{row['key']}.npz"
        if not curve_path.is_file():
            continue
        curve = np.load(curve_path)
        if curve["fpr"].size == 0:
            continue
        axis.plot(curve["fpr"], curve["pro"], label=f"{method} ({row['V-AUPRO']:.3f})", color=colors[row["model"]])
        plotted = True
    if not plotted:
        plt.close(figure)
        return None
    axis.set_xlim(0.0, fpr_limit)
    axis.set_ylim(0.0, 1.0)
    axis.set_xlabel("false-positive rate over nominal voxels")
    axis.set_ylabel("per-region overlap (PRO)")
    axis.set_title(f"{category}, {setup}: PRO up to FPR {fpr_limit:g}")
    axis.legend(fontsize="small", loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_report(config: BenchmarkConfig) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and ``plots/*.png`` for the jobs of ``config``; return their paths."""
    from .config import expand_jobs

    output = config.output
    keys = [spec.key for spec in expand_jobs(config)]
    frame = load_results(output, keys)
    found = set(frame["key"]) if "key" in frame else set()
    missing = [
        {"key": spec.key, "model": spec.model.name, "category": spec.category, "setup": spec.setup, "seed": spec.seed, "status": "not run", "error": "no result yet: the job has not finished"}
        for spec in expand_jobs(config)
        if spec.key not in found
    ]
    if missing:
        frame = pd.concat([frame, pd.DataFrame(missing)], ignore_index=True)
    # Rows follow the configuration's model order, as the table's methods do.
    order = {model.name: index for index, model in enumerate(config.models)}
    frame = frame.sort_values(by="model", key=lambda names: names.map(order), kind="stable", ignore_index=True)
    files: dict[str, Path] = {}
    csv_path = output / "results.csv"
    frame.to_csv(csv_path, index=False)
    files["csv"] = csv_path
    if frame.empty:
        return files

    table = markdown_table(frame, config.categories, config.caption, config.fpr_limit)
    markdown_path = output / "results.md"
    markdown_path.write_text(f"# Benchmark {config.name}\n\n" + table)
    files["markdown"] = markdown_path

    multiple_setups = frame["setup"].nunique() > 1
    frame = frame.assign(method=[_method_label(row, multiple_setups) for _, row in frame.iterrows()])
    limit = f"{config.fpr_limit * 100:g}%"
    files["bars_I-AUROC"] = plot_bars(frame, config.categories, "I-AUROC", output / "plots" / "bars_I-AUROC.png", "Instance AUROC per category")
    files["bars_V-AUPRO"] = plot_bars(frame, config.categories, "V-AUPRO", output / "plots" / "bars_V-AUPRO.png", f"V-AUPRO@{limit} per category")
    for category in config.categories:
        for setup in config.setups:
            name = f"pro_{slugify(category)}_{setup}"
            path = plot_pro_curves(frame, output, category, setup, config.fpr_limit, output / "plots" / f"{name}.png")
            if path is not None:
                files[name] = path
    return files
