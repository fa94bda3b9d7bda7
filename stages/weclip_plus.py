"""``clipes train-weclipplus`` / ``predict-weclipplus`` / ``masks-weclipplus``: WeCLIP+ (TPAMI 2025).

mmseg/mmengine are imported only by ``train-weclipplus``.
"""

from __future__ import annotations

import sys

import click

from clipes.data.datasets import DATASETS
from stages.common import PATH, echo_main, only_set

MODEL_KEYS = ("dataset", "class_file", "background_file", "template", "width", "layers", "grad_method",
              "fp16_out_proj", "late_blocks", "box_threshold")


def _model_flags(func):
    for decorator in reversed([
        click.option("--dataset", type=click.Choice(DATASETS), help="Dataset layout and class list [voc12]."),
        click.option("--classes", "class_file", type=PATH, help="Class file: name<TAB>prompt per line."),
        click.option("--background", "background_file", type=PATH, help="Background prompts, one per line."),
        click.option("--prompt", "template", help="Prompt template with {} [a clean origami {}.]."),
        click.option("--grad", "grad_method", type=click.Choice(["analytic", "autograd"]),
                     help="CAM gradient: closed form, all classes at once [analytic], or the reference's autograd."),
        click.option("--fp16-out-proj/--fp32-out-proj", "fp16_out_proj", default=None,
                     help="The reference's fp16 attention out-projections [on]."),
        click.option("--late-blocks", type=int, help="RFM+ candidate blocks [VOC 6, COCO 8]."),
        click.option("--box-threshold", type=float, help="CAM box threshold [VOC 0.4, COCO 0.7]."),
    ]):
        func = decorator(func)
    return func


def _model_options(options: dict):
    from clipes.weclip_plus.options import ModelOptions

    return ModelOptions(**only_set(**{k: options.pop(k, None) for k in MODEL_KEYS}))


@click.command("train-weclipplus")
@_model_flags
@click.option("--data-root", type=PATH, required=True, help="Dataset folder (VOC: the VOC2012 folder).")
@click.option("--split", type=PATH, required=True, help="Training ids (VOC: train_aug.txt).")
@click.option("--clip", "clip_source", required=True, help="CLIP ViT checkpoint (OpenAI name or path).")
@click.option("--dino", required=True, help="DINOv2 weights: hub .pth, .safetensors or a Hugging Face folder.")
@click.option("--work", type=PATH, help="Work folder; checkpoints in WORK/weclipplus.")
@click.option("--out", type=PATH, help="Checkpoint folder [WORK/weclipplus].")
@click.option("--labels", "labels_file", type=PATH, help="voc12: plain label file '<id> <class> ...' instead of XML.")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT [JPEGImages for voc12, else DATA_ROOT].")
@click.option("--width", type=int, help="Decoder width [256].")
@click.option("--layers", type=int, help="Decoder blocks [3; 5 with a ViT-L/14 DINO in the reference].")
@click.option("--iters", type=int, help="Iterations [VOC 30000, COCO 80000].")
@click.option("--batch", "batch_size", type=int, help="Images per iteration per process [VOC 4, COCO 8].")
@click.option("--crop", type=int, help="Crop size [320].")
@click.option("--lr", type=float, help="Learning rate of the decoder and heads [2e-4].")
@click.option("--override-after", type=int,
              help="Confident predictions replace the pseudo label after this iteration [18000 of 30000, scaled].")
@click.option("--warmup-iters", type=int, help="Linear warm-up iterations [50].")
@click.option("--seed", type=int, help="Random seed [1].")
@click.option("--jobs", type=int, help="Data-loading workers [2].")
@click.option("--checkpoint-interval", type=int, help="Iterations between checkpoints [2000].")
@click.option("--launcher", type=click.Choice(["none", "pytorch"]), help="pytorch under torchrun [none].")
@click.option("--resume/--no-resume", default=None, help="Continue from OUT's last checkpoint [resume].")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="mmengine config override (repeatable).")
@click.option("--verbose", is_flag=True, default=None, help="Also print mmengine's whole log on the console.")
@click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar.")
def train_weclipplus(**options):
    """Train WeCLIP+'s decoder and heads on a frozen CLIP and DINOv2 (resumes an interrupted run in the same OUT)."""
    from clipes.mmseg_ext.runner import parse_options
    from clipes.mmseg_ext.weclip_plus import run_train
    from clipes.weclip_plus.options import TrainOptions

    model = _model_options(options)
    options = only_set(**options)
    options["clip"] = options.pop("clip_source")
    options["options"] = parse_options(options.get("options") or ())
    out = run_train(TrainOptions(model=model, **options), echo=echo_main)
    echo_main(f"train-weclipplus: done; checkpoints and logs in {out}")


def _infer_options(options: dict):
    from clipes.weclip_plus.runner import InferOptions

    # a clipes checkpoint records its model options; each flag given here overrides only itself
    given = only_set(**{k: options.pop(k, None) for k in MODEL_KEYS if k in options})
    options = only_set(**options)
    if "clip_source" in options:
        options["clip"] = options.pop("clip_source")
    return InferOptions(model=given, **options)


def _infer_flags(func):
    for decorator in reversed([
        click.option("--checkpoint", type=PATH, required=True,
                     help="WeCLIP+ checkpoint (clipes iter_N.pth or the reference's)."),
        click.option("--clip", "clip_source", help="CLIP checkpoint [the one a clipes checkpoint names]."),
        click.option("--dino", help="DINOv2 weights [the ones a clipes checkpoint names]."),
        click.option("--device", help="cpu (default), cuda or cuda:N."),
        click.option("--long-side", type=int, help="Images are resized to this long side [512]."),
        click.option("--force", is_flag=True, default=None, help="Recompute into a folder made another way."),
        click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar."),
    ]):
        func = decorator(func)
    return func


@click.command("predict-weclipplus")
@_infer_flags
@_model_flags
@click.option("--images", type=PATH, help="Image folder to predict.")
@click.option("--split", type=PATH, help="Only these ids [every image in IMAGES].")
@click.option("--work", type=PATH, help="Work folder: predictions go to WORK/predictions (scored by `clipes eval`).")
@click.option("--out", type=PATH, help="Prediction folder [WORK/predictions].")
@click.option("--crf/--no-crf", default=None, help="Dense CRF after the multi-scale logits [on, as published].")
@click.option("--jobs", type=int, help="CRF worker processes [1 on CPU, up to 8 on a GPU].")
def predict_weclipplus(**options):
    """Segment images with a trained WeCLIP+: long side 512, scales 1 and 1.5, flip, both branches, then the CRF."""
    from clipes.weclip_plus.runner import run_predict

    summary = run_predict(_infer_options(options), echo=click.echo)
    sys.exit(1 if summary.failed else 0)


@click.command("masks-weclipplus")
@_infer_flags
@_model_flags
@click.option("--data-root", type=PATH, required=True, help="Dataset folder.")
@click.option("--split", type=PATH, required=True, help="Ids to make pseudo masks for.")
@click.option("--labels", "labels_file", type=PATH, help="voc12: plain label file instead of XML.")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT.")
@click.option("--work", type=PATH, help="Work folder: masks go to WORK/masks.")
@click.option("--out", type=PATH, help="Folder whose masks/ receives them [WORK].")
def masks_weclipplus(**options):
    """WeCLIP+'s online pseudo labels (RFM+ and PAR) at each image's size, into OUT/masks."""
    from clipes.weclip_plus.runner import run_masks

    summary = run_masks(_infer_options(options), echo=click.echo)
    sys.exit(1 if summary.failed else 0)
