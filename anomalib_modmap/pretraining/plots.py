"""Loss-curve plot of a pretraining run."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

TOTAL_COLUMNS = ("loss", "koleo")
PREDICTION_COLUMNS = ("dino", "ibot")
ENTROPY_COLUMNS = ("teacher_marginal_entropy", "teacher_sample_entropy")


def read_metrics(log_dir: Path) -> pd.DataFrame:
    """Concatenate every ``metrics.csv`` below ``log_dir`` (one per launch of a resumed run), sorted by step."""
    frames = [pd.read_csv(path) for path in sorted(Path(log_dir).rglob("metrics.csv"))]
    frames = [frame for frame in frames if "step" in frame.columns and not frame.empty]
    if not frames:
        msg = f"No metrics.csv with a 'step' column below {log_dir}; the run logged no step yet."
        raise FileNotFoundError(msg)
    metrics = pd.concat(frames, ignore_index=True)
    return metrics.groupby("step", as_index=False).last().sort_values("step")


def plot_loss_curves(
    log_dir: Path,
    path: Path,
    title: str = "pretraining",
    smoothing: int = 5,
    prototypes: int | None = None,
) -> Path:
    """Plot the loss terms and the teacher entropies against the step in three panels; write a PNG to ``path``.

    Thin lines are the logged values, thick lines their centred rolling mean over ``smoothing`` points.
    With ``prototypes`` given, a dashed line marks ``log K``: the DINO or iBOT loss of a student
    that predicts the uniform distribution, where both losses sit until the teacher's targets
    start to differ between views.
    """
    metrics = read_metrics(log_dir)
    figure, (total_axis, prediction_axis, entropy_axis) = plt.subplots(1, 3, figsize=(16, 4))
    panels = ((total_axis, TOTAL_COLUMNS), (prediction_axis, PREDICTION_COLUMNS), (entropy_axis, ENTROPY_COLUMNS))
    for axis, columns in panels:
        for column in columns:
            if column not in metrics.columns:
                continue
            series = metrics[["step", column]].dropna()
            line = axis.plot(series["step"], series[column], linewidth=0.6, alpha=0.4)[0]
            smooth = series[column].rolling(smoothing, center=True, min_periods=1).mean()
            axis.plot(series["step"], smooth, color=line.get_color(), linewidth=2, label=column)
        axis.set_xlabel("optimisation step")
        axis.grid(alpha=0.3)
    if prototypes:
        prediction_axis.axhline(math.log(prototypes), color="gray", linestyle="--", linewidth=1, label="log K (uniform)")
    for axis in (total_axis, prediction_axis, entropy_axis):
        axis.legend()
    total_axis.set_ylabel("loss")
    total_axis.set_title(f"{title}: total loss, KoLeo (unweighted)")
    prediction_axis.set_ylabel("cross-entropy")
    prediction_axis.set_title("DINO (class token) and iBOT (masked patches)")
    entropy_axis.set_ylabel("entropy / log K")
    entropy_axis.set_ylim(0, 1.05)
    entropy_axis.set_title("centred teacher distribution")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
