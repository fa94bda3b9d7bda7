"""Helpers every stage command shares; ``stages.cli`` and each stage module import them from here."""

from __future__ import annotations

import os
from pathlib import Path

import click

PATH = click.Path(path_type=Path)


def only_set(**options) -> dict:
    """Keep the options the user gave (click passes None for the rest), so library defaults rule."""
    return {key: value for key, value in options.items() if value is not None}


def echo_main(line: str) -> None:
    """Print once per job: on torchrun's rank 0 only (training commands run in every process)."""
    if os.environ.get("RANK", "0") == "0":
        click.echo(line)
