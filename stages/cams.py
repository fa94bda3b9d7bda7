"""``clipes cams``: stage 1, softmax-GradCAM maps into ``<WORK>/cams``."""

from __future__ import annotations

import sys

import click

from clipes.clip_es.cam_runner import CamOptions, parse_shard, run_cams
from clipes.data.datasets import DATASETS
from stages.common import PATH, only_set


@click.command("cams")
@click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Dataset layout.")
@click.option("--data-root", type=PATH, required=True, help="Dataset folder (VOC: the VOC2012 folder).")
@click.option("--split", type=PATH, required=True, help="Split file, one image id per line.")
@click.option("--clip", "clip_source", required=True, help="OpenAI CLIP name (ViT-B/16) or checkpoint path.")
@click.option("--work", type=PATH, required=True, help="Work folder; writes <WORK>/cams.")
@click.option("--device", help="cpu (default), cuda or cuda:N.")
@click.option("--batch", "batch_size", type=int, help="Same-size images per forward [1 on CPU, 8 on GPU].")
@click.option("--jobs", type=int, help="Image decoding workers [1 on CPU, up to 8 on GPU].")
@click.option("--shard", help="i/n: this process takes every n-th image from the i-th [torchrun env or 0/1].")
@click.option("--prompt", "template", help="Prompt template with {} [a clean origami {}.].")
@click.option("--classes", "class_file", type=PATH, help="Class file: name<TAB>prompt per line.")
@click.option("--background", "background_file", type=PATH, help="Background prompts, one per line.")
@click.option("--labels", "labels_file", type=PATH, help="voc12: plain label file '<id> <class> ...' instead of XML.")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT [JPEGImages for voc12, else DATA_ROOT].")
@click.option("--synonyms", type=click.Choice(["joined", "split"]), help="Comma synonyms: one prompt [joined] or averaged.")
@click.option("--grad", "grad_method", type=click.Choice(["analytic", "autograd"]), help="GradCAM gradient [analytic].")
@click.option("--fp16-pos-embed/--fp32-pos-embed", default=None, help="Reference's fp16 rounding of positions [on].")
@click.option("--quirk-77-tokens/--no-quirk-77-tokens", default=None, help="Reference's 76-patch quirk [on].")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), help="GPU only: autocast frozen blocks [fp32].")
@click.option("--save-affinity", is_flag=True, default=None, help="Also cache attention for refine in WORK/attention.")
@click.option("--affinity-layers", type=int, help="Final blocks averaged into that cache [8].")
@click.option("--force", is_flag=True, default=None, help="Recompute all, even in a folder made another way.")
@click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar.")
def cams(shard, **options):
    """Softmax-GradCAM for every labelled class of every image of a split (CLIP-ES, stage 1)."""
    options = only_set(**options)
    options["clip"] = options.pop("clip_source")
    if shard is not None:
        options["shard"] = parse_shard(shard)
    summary = run_cams(CamOptions(**options), echo=click.echo)
    sys.exit(1 if summary.failed else 0)
