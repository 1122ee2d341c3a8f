"""Command-line entry point ``modmap``: a click group; each command lives in its own module."""

from __future__ import annotations

import click

from pathlib import Path

from anomalib_modmap.demo import demo
from anomalib_modmap.pretraining.commands import pretrain_depth, pretrain_image


@click.group(name="modmap")
def main() -> None:
    """Multi-view, multimodal 3D anomaly detection tools for anomalib."""


main.add_command(demo)
main.add_command(pretrain_depth)
main.add_command(pretrain_image)


@main.command("benchmark")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True, help="Benchmark YAML (see configs/benchmark/).")
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=None, help="Results folder; overrides the configuration's 'output'.")
@click.option("--rerun", is_flag=True, help="Run every job again, finished ones included.")
def benchmark(config_path: Path, output: Path | None, rerun: bool) -> None:
    """Train and test every model x category x setup x seed of a benchmark grid; write CSV, table and plots."""
    import pandas as pd

    from anomalib_modmap.benchmark import BenchmarkConfigError, load_config, run_benchmark

    try:
        config = load_config(config_path, output=output)
        files = run_benchmark(config, rerun=rerun)
    except BenchmarkConfigError as error:
        raise click.ClickException(str(error)) from error
    if "markdown" in files:
        click.echo(files["markdown"].read_text())
    for name, path in files.items():
        click.echo(f"{name}: {path}")
    results = pd.read_csv(files["csv"])
    unfinished = results[results["status"] != "ok"] if "status" in results else results
    if not unfinished.empty:
        msg = f"{len(unfinished)} of {len(results)} benchmark jobs did not finish: {', '.join(unfinished['key'].astype(str))}. Their errors are listed under the table in {files.get('markdown', files['csv'])}."
        raise click.ClickException(msg)


if __name__ == "__main__":
    main()
