"""Time Modmap against its per-pair loop and the CFM SiM3D configuration, and sweep peak memory over views.

Subcommands (run from the repository root):

    python -m benchmarks.bench_modmap_peers table --device cpu --image-size 112 --views 9
    python -m benchmarks.bench_modmap_peers sweep --device cpu --image-size 112 --views 5 9 18 36 --plot sweep.png

``table`` times one sample after a warm-up, model only (sample on the device,
anomaly maps out) and end to end (sample file read, moved to the device,
scored, anomaly volume fused), for Modmap's batched pairing, the per-pair loop
and the CFM SiM3D configuration, in one process; then one training epoch with
cached features against one that re-encodes the views of every step.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the memory in
use before the run, in the same process. On CPU, each configuration runs again
in a fresh child process, and the figure is the resident-set high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs``) above the resident set
before the run, with glibc told to return freed blocks at once.

Encoders are random-initialised: timing does not need trained weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import modmap_timing as mt

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    """One line of the table: path, what was timed, seconds and peak MiB."""

    path: str
    scope: str
    seconds: float
    peak_mib: float | None


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every subcommand and by ``gpu_check``."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: cuda when available)")
    parser.add_argument("--image-size", type=int, default=112, help="image side in pixels (default 112)")
    parser.add_argument("--image-encoder", default=mt.IMAGE_ENCODER, help=f"Modmap image encoder (default {mt.IMAGE_ENCODER})")
    parser.add_argument("--depth-encoder", default=mt.DEPTH_ENCODER, help=f"Modmap depth encoder (default {mt.DEPTH_ENCODER})")
    parser.add_argument("--cfm-encoder", default=mt.CFM_ENCODER, help=f"CFM configuration's encoder for both modalities (default {mt.CFM_ENCODER})")
    parser.add_argument("--pair-batch-size", type=int, default=48, help="Modmap view pairs per batched step (default 48)")
    parser.add_argument("--bf16", action="store_true", help="run under bf16 autocast")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path, best kept; the per-pair loop runs once (default 2)")


def build(args: argparse.Namespace, pair_batch_size: int | None = None) -> mt.Models:
    """Build the models of ``args`` on its device."""
    models = mt.build_models(args.image_encoder, args.depth_encoder, args.cfm_encoder, pair_batch_size or args.pair_batch_size)
    return models.to(args.device)


def warm_up(models: mt.Models, args: argparse.Namespace, paths: tuple[str, ...], sample: mt.Sample | None = None) -> None:
    """Run every path end to end on a 2-view sample, and Modmap and CFM once on ``sample`` itself.

    The second part lets kernels that are chosen or compiled per tensor shape
    (cuBLAS, cuDNN and oneDNN) see the timed shapes before the clock starts.
    The per-pair loop encodes one view at a time, so the 2-view sample already
    has its shapes.
    """
    device = torch.device(args.device)
    small = mt.synthetic_sample(2, args.image_size, seed=1)
    with mt.sample_file(small) as path:
        for name in paths:
            mt.end_to_end(models, name, path, device, args.bf16)()
    if sample is not None:
        on_device = sample.to(device)
        for name in paths:
            if name != "loop":
                mt.model_only(models, name, on_device, device, args.bf16)()
    mt.synchronize(device)


def measure_child(args: argparse.Namespace) -> dict:
    """Child process body: one configuration, its time and peak resident memory, as a dict."""
    device = torch.device(args.device)
    models = build(args, args.pair_batch_size_override)
    sample = mt.synthetic_sample(args.views, args.image_size)
    warm_up(models, args, (args.path,), sample)
    with mt.sample_file(sample) as file:
        if args.scope == "model":
            on_device = sample.to(device)
            run = mt.model_only(models, args.path, on_device, device, args.bf16)
        else:
            run = mt.end_to_end(models, args.path, file, device, args.bf16)
        measurement = mt.timed_rss(run) if device.type == "cpu" else mt.timed(run, device)
    return {"path": args.path, "scope": args.scope, "views": args.views, **asdict(measurement)}


def measure_in_child(args: argparse.Namespace, path: str, scope: str, views: int, pair_batch_size: int | None = None, timeout: float = 1800) -> dict:
    """Run :func:`measure_child` in a fresh Python process and return its result."""
    command = [
        sys.executable, "-m", "benchmarks.bench_modmap_peers", "measure",
        "--device", args.device, "--image-size", str(args.image_size), "--views", str(views),
        "--image-encoder", args.image_encoder, "--depth-encoder", args.depth_encoder, "--cfm-encoder", args.cfm_encoder,
        "--pair-batch-size", str(args.pair_batch_size), "--path", path, "--scope", scope,
    ]  # fmt: skip
    if pair_batch_size is not None:
        command += ["--pair-batch-size-override", str(pair_batch_size)]
    if args.bf16:
        command.append("--bf16")
    env = {**mt.child_env(), "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        msg = f"Memory child for {path}/{scope}/V={views} failed:\n{result.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_table(args: argparse.Namespace, loop_targets: int | None = None, log: callable = print) -> dict:
    """Time every path and the two training epochs in this process; return rows and ratios.

    ``loop_targets`` times the per-pair loop on the first target views only and
    scales its time by ``V / loop_targets`` (its cost is exactly linear in the
    target views); ``None`` runs all of them.
    """
    device = torch.device(args.device)
    models = build(args)
    sample = mt.synthetic_sample(args.views, args.image_size)
    log(f"sample: {args.views} views of {args.image_size}x{args.image_size}, {sample.grid.num_voxels:,} surface voxels")
    warm_up(models, args, mt.PATHS, sample)
    on_device = sample.to(device)

    rows: list[Row] = []
    scale = 1.0 if loop_targets is None or loop_targets >= args.views else args.views / loop_targets
    if scale != 1.0:
        log(f"  per-pair loop timed on {loop_targets} of {args.views} target views; its scoring time is scaled by {scale:.2f}")
    with mt.sample_file(sample) as file:
        for name in mt.PATHS:
            targets = loop_targets if name == "loop" else None
            model_seconds = 0.0
            for scope, run in (
                ("model", mt.model_only(models, name, on_device, device, args.bf16, targets)),
                ("end to end", mt.end_to_end(models, name, file, device, args.bf16, targets)),
            ):
                # Best of --repeats; the per-pair loop, 2 V^2 encoder passes long, runs once.
                runs = [mt.timed(run, device) for _ in range(1 if name == "loop" else max(1, args.repeats))]
                measured = min(runs, key=lambda item: item.seconds)
                seconds = measured.seconds
                if name == "loop":
                    # The loop's cost is linear in its target views; the end to end run already fuses all V views.
                    seconds += (scale - 1.0) * (measured.seconds if scope == "model" else model_seconds)
                if scope == "model":
                    model_seconds = measured.seconds
                rows.append(Row(name, scope, seconds, measured.peak_mib))
                log(f"  {name:7s} {scope:10s} {seconds:8.3f} s" + ("" if measured.peak_mib is None else f"  peak {measured.peak_mib:8.0f} MiB"))

    # Training: one epoch over all V x V pairs, features cached against re-encoded per step.
    model = models.modmap
    with mt.autocast(device, args.bf16):
        cached = model.extract_features(on_device.image, on_device.depth_map, on_device.valid_depth, on_device.view_index)
    mt.training_epoch(models, mt.synthetic_sample(2, args.image_size, seed=1).to(device), device, args.bf16, None)()
    epochs = {}
    for label, features in (("cached", cached), ("recompute", None)):
        epoch = mt.training_epoch(models, on_device, device, args.bf16, features)
        measured = min((mt.timed(epoch, device) for _ in range(max(1, args.repeats))), key=lambda item: item.seconds)
        epochs[label] = measured.seconds
        rows.append(Row(f"train ({label} features)", "one epoch", measured.seconds, measured.peak_mib))
        log(f"  training epoch, {label:9s} features {measured.seconds:8.3f} s")

    # Matrix-multiply work of one sample, counted by torch: the floor that the times are compared with.
    flops = {}
    for name in ("modmap", "cfm"):
        with FlopCounterMode(display=False) as counter:
            mt.model_only(models, name, on_device, device, args.bf16)()
        flops[name] = counter.get_total_flops()
        log(f"  {name:7s} matrix work {flops[name] / 1e9:10.1f} GFLOP per sample")

    times = {(row.path, row.scope): row.seconds for row in rows}
    ratios = {
        "loop / modmap (model)": times["loop", "model"] / times["modmap", "model"],
        "loop / modmap (end to end)": times["loop", "end to end"] / times["modmap", "end to end"],
        "modmap / cfm (model)": times["modmap", "model"] / times["cfm", "model"],
        "modmap / cfm (end to end)": times["modmap", "end to end"] / times["cfm", "end to end"],
        "recompute / cached epoch": epochs["recompute"] / epochs["cached"],
        "floor: modmap / cfm matrix work": flops["modmap"] / flops["cfm"],
    }
    return {"rows": rows, "ratios": ratios, "models": models, "sample": sample, "flops": flops}


def format_table(rows: list[Row]) -> str:
    """Markdown table of ``rows``."""
    lines = ["| path | scope | seconds | peak memory (MiB) |", "|---|---|---|---|"]
    for row in rows:
        peak = "-" if row.peak_mib is None else f"{row.peak_mib:.0f}"
        lines.append(f"| {row.path} | {row.scope} | {row.seconds:.3f} | {peak} |")
    return "\n".join(lines)


def table_command(args: argparse.Namespace) -> None:
    """``table``: times in one process, CPU peak memory in child processes."""
    result = run_table(args, args.loop_targets)
    if args.check_loop:
        sample = mt.synthetic_sample(min(args.views, 4), args.image_size, seed=2).to(args.device)
        difference = mt.check_loop_matches(result["models"], sample)
        print(f"per-pair loop matches batched pairing: max distance difference {difference:.1e}")
    rows = result["rows"]
    if torch.device(args.device).type == "cpu" and not args.no_memory:
        for row in rows:
            if row.path in mt.PATHS:
                scope = "model" if row.scope == "model" else "e2e"
                row.peak_mib = measure_in_child(args, row.path, scope, args.views)["peak_mib"]
    print(format_table(rows))
    for name, value in result["ratios"].items():
        print(f"{name}: {value:.2f}")


def sweep_command(args: argparse.Namespace) -> None:
    """``sweep``: Modmap's peak memory and time per view count, each in a fresh process, and a PNG plot."""
    results = []
    for views in args.views:
        for label, pair_batch in (("batched (48 pairs per step)", None), ("all pairs in one step", views * views)):
            if pair_batch is not None and not args.all_pairs:
                continue
            result = measure_in_child(args, "modmap", "model", views, pair_batch)
            result["label"] = label
            results.append(result)
            print(f"V={views:3d} {label:28s} {result['seconds']:8.3f} s  peak {result['peak_mib']:8.1f} MiB", flush=True)
    batched = {result["views"]: result["peak_mib"] for result in results if result["label"].startswith("batched")}
    if 9 in batched and 36 in batched:
        print(f"peak memory 36 views / 9 views: {batched[36] / batched[9]:.2f} (target <= 4.5; linear 4.0, quadratic 16)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.plot:
        plot_sweep(results, Path(args.plot), args)
        print(f"plot: {args.plot}")


def plot_sweep(results: list[dict], path: Path, args: argparse.Namespace) -> None:
    """Plot peak memory against views, with the linear and quadratic growth from the smallest view count."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label in dict.fromkeys(result["label"] for result in results):
        points = sorted((result["views"], result["peak_mib"]) for result in results if result["label"] == label)
        views, peaks = zip(*points, strict=True)
        axis.plot(views, peaks, "o-", label=f"Modmap, {label}")
        if label.startswith("batched"):
            first_views, first_peak = points[0]
            grid = torch.linspace(views[0], views[-1], 50)
            axis.plot(grid, first_peak * grid / first_views, ":", color="gray", label="linear in views (from the first point)")
            axis.plot(grid, first_peak * (grid / first_views) ** 2, "--", color="lightgray", label="quadratic in views")
    axis.set_xlabel("views per sample")
    axis.set_ylabel("peak memory above the start (MiB)")
    axis.set_ylim(bottom=0, top=max(result["peak_mib"] for result in results) * 1.15)
    axis.set_title(f"Modmap inference, {args.image_size}x{args.image_size}, {args.device}, model only")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    """Parse the subcommand and run it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    table = commands.add_parser("table", help="time the three paths and the training epochs on one sample")
    add_common_options(table)
    table.add_argument("--views", type=int, default=9, help="views per sample (default 9)")
    table.add_argument("--loop-targets", type=int, default=None, help="time the per-pair loop on this many target views and scale to V")
    table.add_argument("--check-loop", action="store_true", help="also assert that the loop matches the batched pairing on 4 views")
    table.add_argument("--no-memory", action="store_true", help="skip the CPU memory children")
    table.set_defaults(handler=table_command)

    sweep = commands.add_parser("sweep", help="Modmap's peak memory and time for several view counts")
    add_common_options(sweep)
    sweep.add_argument("--views", type=int, nargs="+", default=[5, 9, 18, 36], help="view counts (default 5 9 18 36)")
    sweep.add_argument("--all-pairs", action="store_true", help="also measure all V x V pairs in one step (quadratic memory)")
    sweep.add_argument("--plot", default=None, help="write a PNG plot here")
    sweep.add_argument("--json", default=None, help="write the measurements here")
    sweep.set_defaults(handler=sweep_command)

    measure = commands.add_parser("measure", help="(internal) one configuration in this process, JSON out")
    add_common_options(measure)
    measure.add_argument("--views", type=int, required=True)
    measure.add_argument("--path", choices=mt.PATHS, required=True)
    measure.add_argument("--scope", choices=("model", "e2e"), required=True)
    measure.add_argument("--pair-batch-size-override", type=int, default=None)
    measure.set_defaults(handler=lambda args: print(json.dumps(measure_child(args))))

    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
