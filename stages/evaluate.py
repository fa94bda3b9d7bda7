"""``clipes eval``: mIoU with per-class IoU, precision and recall of each stage folder."""

from __future__ import annotations

import sys

import click

from clipes.eval_runner import EvalOptions, run_eval
from stages.common import PATH, only_set


@click.command("eval")
@click.option("--work", type=PATH, required=True, help="Work folder with any of cams/, refined/, masks/, labels/, predictions/.")
@click.option("--split", type=PATH, required=True, help="Ids to score, one per line.")
@click.option("--data-root", type=PATH, help="Dataset folder [the manifests'].")
@click.option("--gt-dir", type=PATH, help="Ground-truth PNGs [DATA_ROOT/SegmentationClassAug or SegmentationClass].")
@click.option("--json", "json_path", type=PATH, help="Where the figures go [WORK/eval.json].")
def evaluate(**options):
    """Score raw CAMs, refined maps, pseudo masks and segmenter predictions against ground truth (255 in GT ignored)."""
    report = run_eval(EvalOptions(**only_set(**options)), echo=click.echo)
    sys.exit(1 if report["failures"] else 0)
