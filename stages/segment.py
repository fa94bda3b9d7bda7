"""``clipes train-seg`` / ``test-seg`` / ``predict``: stage 3, an mmseg segmenter on the pseudo masks.

mmseg is imported only when one of these commands runs.
"""

from __future__ import annotations

import sys

import click

from stages.common import PATH, echo_main, only_set


def _common(func):
    for decorator in reversed([
        click.option("--config", type=PATH, required=True, help="mmseg config (see segmenter_configs/)."),
        click.option("--data-root", type=PATH, help="Dataset folder [from WORK's stage-2 manifest]."),
        click.option("--dataset", type=click.Choice(["voc12", "coco14", "custom"]),
                     help="[from the manifest]; voc12/coco14 also name the classes of masks made elsewhere."),
        click.option("--classes", type=PATH, help="Class file for masks made elsewhere [manifest, else DATASET's]."),
        click.option("--images-dir", help="Image folder relative to DATA_ROOT [dataset default]."),
        click.option("--val-split", type=PATH, help="Validation ids [DATA_ROOT/ImageSets/Segmentation/val.txt]."),
        click.option("--gt-dir", type=PATH, help="Ground-truth PNGs [DATA_ROOT/SegmentationClass(Aug)]."),
        click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="Config override, mmengine style (repeatable), applied last."),
        click.option("--launcher", type=click.Choice(["none", "pytorch"]), help="pytorch under torchrun [none]."),
        click.option("--verbose", is_flag=True, default=None,
                     help="Also print mmengine's whole log on the console [progress bar; full log in OUT]."),
    ]):
        func = decorator(func)
    return func


def _seg_options(**options):
    from clipes.mmseg_ext.runner import SegOptions, parse_options

    options["options"] = parse_options(options.get("options") or ())
    return SegOptions(**only_set(**options))


@click.command("train-seg")
@_common
@click.option("--work", type=PATH, required=True, help="Work folder with masks/ (labels/, confidence/ for soft).")
@click.option("--out", type=PATH, help="Checkpoints and logs [WORK/segmenter].")
@click.option("--split", type=PATH, help="Training ids [every image with a pseudo mask].")
@click.option("--loss", type=click.Choice(["hard", "soft"]), help="Confidence-guided loss mode [the config's].")
@click.option("--pretrained", help="Backbone weights: a path, or an open-mmlab:// / torchvision:// name.")
@click.option("--resume/--no-resume", default=None, help="Continue from OUT's last checkpoint [resume].")
@click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar.")
def train_seg(**options):
    """Train a segmenter on the pseudo masks (resumes an interrupted run in the same OUT)."""
    from clipes.mmseg_ext.runner import run_train

    out = run_train(_seg_options(**options), echo=echo_main)
    echo_main(f"train-seg: done; checkpoints and logs in {out}")


@click.command("test-seg")
@_common
@click.option("--checkpoint", type=PATH, required=True, help="Trained weights (.pth).")
@click.option("--work", type=PATH, help="Work folder whose manifest names the dataset and classes.")
@click.option("--out", type=PATH, help="Logs [next to the checkpoint, test/].")
def test_seg(**options):
    """Evaluate a trained segmenter on validation ground truth (mIoU, per-class IoU)."""
    from clipes.mmseg_ext.runner import run_test

    metrics = run_test(_seg_options(**options), echo=echo_main)
    echo_main("test-seg: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float)))


@click.command("predict")
@click.option("--checkpoint", type=PATH, required=True, help="Trained weights (.pth).")
@click.option("--images", type=PATH, required=True, help="Folder of images.")
@click.option("--split", type=PATH, help="Only these ids, one per line [every image in the folder].")
@click.option("--out", type=PATH, required=True, help="Where <id>.png predictions go (palette PNGs).")
@click.option("--config", type=PATH, help="mmseg config [the one saved in the checkpoint].")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
def predict(checkpoint, images, out, config, device, split):
    """Write palette-PNG predictions of a trained segmenter for a folder of images (resumable)."""
    from clipes.mmseg_ext.runner import run_predict

    done, already, failures = run_predict(checkpoint, images, out, config, device, echo=click.echo, split=split)
    click.echo(f"predict: {done} done, {already} already done, {len(failures)} failed")
    sys.exit(1 if failures else 0)
