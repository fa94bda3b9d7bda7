"""``clipes prepare-voc`` / ``prepare-coco``: from downloaded datasets to split files and ground truth."""

from __future__ import annotations

import sys

import click

from stages.common import PATH


@click.command("prepare-voc")
@click.option("--voc", type=PATH, required=True, help="The VOC2012 folder (JPEGImages/, Annotations/, ...).")
@click.option("--sbd", type=PATH, help="SBD's dataset/ folder (cls/, train.txt, val.txt): adds train_aug.")
@click.option("--progress/--no-progress", default=True, help="Progress bar.")
def prepare_voc(voc, sbd, progress):
    """Check a VOC 2012 tree; with SBD, write train_aug.txt and SegmentationClassAug/ (resumable)."""
    from clipes.data.prepare_voc import prepare_voc as run

    summary = run(voc, sbd, echo=click.echo, progress=progress)
    sys.exit(1 if summary.failed else 0)


@click.command("prepare-coco")
@click.option("--annotations", type=PATH, required=True, help="instances_train2014.json (or val2014).")
@click.option("--images", type=PATH, required=True, help="That split's image folder (train2014/).")
@click.option("--out", type=PATH, help="Where <name>.txt and SegmentationClass/ go [the image folder's parent].")
@click.option("--progress/--no-progress", default=True, help="Progress bar.")
def prepare_coco(annotations, images, out, progress):
    """Write the coco14 split file (<id> <class index> ...) and ground-truth PNGs (resumable)."""
    from clipes.data.prepare_coco import prepare_coco as run

    summary = run(annotations, images, out, echo=click.echo, progress=progress)
    sys.exit(1 if summary.failed else 0)
