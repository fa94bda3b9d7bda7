"""``clipes eval``: mIoU with per-class IoU, precision and recall of each stage folder."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clipes.eval_runner import EvalOptions, run_eval

_PATH = click.Path(path_type=Path)


@click.command("eval")
@click.option("--work", type=_PATH, required=True, help="Work folder with any of cams/, refined/, masks/, labels/, predictions/.")
@click.option("--split", type=_PATH, required=True, help="Ids to score, one per line.")
@click.option("--data-root", type=_PATH, help="Dataset folder [the manifests'].")
@click.option("--gt-dir", type=_PATH, help="Ground-truth PNGs [DATA_ROOT/SegmentationClassAug or SegmentationClass].")
@click.option("--json", "json_path", type=_PATH, help="Where the figures go [WORK/eval.json].")
def evaluate(**options):
    """Score raw CAMs, refined maps, pseudo masks and segmenter predictions against ground truth (255 in GT ignored)."""
    from stages.cli import only_set

    report = run_eval(EvalOptions(**only_set(**options)), echo=click.echo)
    sys.exit(1 if report["failures"] else 0)
