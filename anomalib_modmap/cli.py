"""Command-line entry point ``modmap``: a click group; each command lives in its own module."""

from __future__ import annotations

import click

from anomalib_modmap.demo import demo
from anomalib_modmap.pretraining.commands import pretrain_depth, pretrain_image


@click.group(name="modmap")
def main() -> None:
    """Multi-view, multimodal 3D anomaly detection tools for anomalib."""


main.add_command(demo)
main.add_command(pretrain_depth)
main.add_command(pretrain_image)


if __name__ == "__main__":
    main()
