"""``clipes train-weakclip`` / ``masks-weakclip``: WeakCLIP (IJCV 2024) between stages 2 and 3.

Seeds (CLIP-ES pseudo masks in WORK/masks, or any folder of mask PNGs) -> train-weakclip ->
masks-weakclip -> refined pseudo masks in WORK/methods/weakclip/masks -> eval / train-seg.
"""

from __future__ import annotations

import sys

import click

from clipes.data.datasets import DATASETS
from stages.common import PATH, echo_main, only_set


@click.command("train-weakclip")
@click.option("--work", type=PATH, help="Work folder: seeds from WORK/masks, checkpoints to WORK/weakclip.")
@click.option("--config", type=PATH, help="WeakCLIP config [segmenter_configs/weakclip/ VOC release].")
@click.option("--seeds", type=PATH, help="Folder of seed mask PNGs [WORK/masks].")
@click.option("--out", type=PATH, help="Checkpoint folder [WORK/weakclip].")
@click.option("--clip", "clip", help="CLIP ViT checkpoint (OpenAI name or path, .safetensors, HF folder).")
@click.option("--data-root", type=PATH, help="Dataset folder [from the seeds' manifest].")
@click.option("--dataset", type=click.Choice(DATASETS), help="voc12 / coco14 / custom [from the manifest].")
@click.option("--classes", type=PATH, help="Class file, for seeds made elsewhere with a custom label space.")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT.")
@click.option("--split", type=PATH, help="Training ids [every id with a seed PNG].")
@click.option("--extra-split", type=PATH, help="A second id list appended (VOC release: train.txt + trainaug.txt).")
@click.option("--seed-labels", type=click.Choice(["clipes", "model"]),
              help="Seed values: clipes' (COCO contiguous 0..80) or the model's label space "
                   "[clipes with a clipes manifest, else model].")
@click.option("--frozen-clip", is_flag=True, default=None,
              help="Freeze the CLIP encoders exactly (not the reference: its min-lr leak moves them).")
@click.option("--adapter-lr-mult", type=float, help="Give the pyramid adapter a learning rate (reference: 0).")
@click.option("--chained-coattention", is_flag=True, default=None,
              help="Chain the co-attention layers (reference: each sees the unupdated input).")
@click.option("--iters", type=int, help="Iterations [the config's: VOC 20000, COCO 40000].")
@click.option("--batch", "batch_size", type=int, help="Images per iteration per process [the config's].")
@click.option("--lr", type=float, help="AdamW learning rate [1e-4].")
@click.option("--jobs", type=int, help="Data-loading workers [the config's].")
@click.option("--launcher", type=click.Choice(["none", "pytorch"]), help="pytorch under torchrun [none].")
@click.option("--resume/--no-resume", default=None, help="Continue from OUT's last checkpoint [resume].")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="mmengine config override (repeatable).")
@click.option("--verbose", is_flag=True, default=None, help="Also print mmengine's whole log on the console.")
@click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar.")
def train_weakclip(**options):
    """Train WeakCLIP on seed masks (resumes an interrupted run in the same OUT)."""
    from clipes.mmseg_ext.runner import parse_options
    from clipes.mmseg_ext.weakclip import run_train
    from clipes.weakclip.options import TrainOptions

    options = only_set(**options)
    options["options"] = parse_options(options.get("options") or ())
    out = run_train(TrainOptions(**options), echo=echo_main)
    echo_main(f"train-weakclip: done; checkpoints and logs in {out}")


def _ratios(text):
    return tuple(float(r) for r in text.split(",")) if text else None


@click.command("masks-weakclip")
@click.option("--checkpoint", type=PATH, required=True, help="WeakCLIP checkpoint (clipes iter_N.pth or released).")
@click.option("--work", type=PATH, help="Work folder: ids and images from WORK/masks; masks to "
                                        "WORK/methods/weakclip/masks.")
@click.option("--out", type=PATH, help="Folder whose masks/ receives them [WORK/methods/weakclip].")
@click.option("--clip", "clip", help="CLIP checkpoint [the one a clipes checkpoint names].")
@click.option("--config", type=PATH, help="Config of a reference checkpoint [VOC for 21 classes, COCO for 91].")
@click.option("--data-root", type=PATH, help="Dataset folder [from WORK/masks' manifest].")
@click.option("--dataset", type=click.Choice(DATASETS), help="Dataset layout [from the manifest].")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT.")
@click.option("--split", type=PATH, help="Ids to make masks for [those of WORK/masks].")
@click.option("--crf/--no-crf", default=None, help="The inference CRF [on]; off: argmax of the averaged softmax.")
@click.option("--ratios", help="Comma-separated view ratios [the config's: 0.5,...,1.75].")
@click.option("--flip/--no-flip", default=None, help="Flipped views [on].")
@click.option("--device", help="cpu (default), cuda or cuda:N.")
@click.option("--force", is_flag=True, default=None, help="Recompute into a folder made another way.")
@click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar.")
def masks_weakclip(**options):
    """Pseudo masks of a trained WeakCLIP: 12 views, slide windows, softmax average, CRF."""
    from clipes.mmseg_ext.weakclip import load_model
    from clipes.weakclip.options import MasksOptions
    from clipes.weakclip.runner import run_masks

    options = only_set(**options)
    if "ratios" in options:
        options["ratios"] = _ratios(options["ratios"])
    summary = run_masks(MasksOptions(**options), load_model, echo=click.echo)
    sys.exit(1 if summary.failed else 0)
