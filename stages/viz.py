"""``clipes viz`` (panels and an HTML report for a work folder) and ``clipes show`` (one panel)."""

from __future__ import annotations

import click

from stages.common import PATH


@click.command("viz")
@click.option("--work", type=PATH, required=True, help="Work folder (any of cams/, refined/, masks/, predictions/).")
@click.option("--data-root", type=PATH, help="Dataset folder [the manifests'].")
@click.option("--gt-dir", type=PATH, help="Ground-truth PNGs [DATA_ROOT/SegmentationClass(Aug) if present].")
@click.option("-n", "--n", "limit", type=int, help="Draw only the N worst images [all].")
@click.option("--progress/--no-progress", default=True, help="Progress bars.")
def viz(work, data_root, gt_dir, limit, progress):
    """Write WORK/viz: a panel per image and index.html (worst first, class filter; opens from file://)."""
    from clipes.viz import run_viz

    run_viz(work, data_root, gt_dir, limit, echo=click.echo, progress=progress)


@click.command("show")
@click.argument("image_id")
@click.option("--work", type=PATH, required=True, help="Work folder.")
@click.option("--out", type=PATH, help="PNG to write [WORK/viz/panels/<id>.png].")
@click.option("--data-root", type=PATH, help="Dataset folder [the manifests'].")
@click.option("--gt-dir", type=PATH, help="Ground-truth PNGs [DATA_ROOT/SegmentationClass(Aug) if present].")
def show(image_id, work, out, data_root, gt_dir):
    """Write the panel of one image (every stage WORK holds) as a PNG; opens nothing."""
    from clipes.viz import show as draw

    click.echo(f"show: {draw(work, image_id, out, data_root, gt_dir)}")
