"""``clipes train-excel`` / ``predict-excel`` / ``masks-excel`` / ``cams-excel``: ExCEL (CVPR 2025).

mmseg/mmengine are imported only by ``train-excel``.
"""

from __future__ import annotations

import sys

import click

from clipes.data.datasets import DATASETS
from stages.common import PATH, echo_main, only_set

MODEL_KEYS = ("dataset", "class_file", "background_file", "template", "attributes", "clusters", "top_k", "width",
              "layers", "attn_layers", "box_threshold")


def _model_flags(func):
    for decorator in reversed([
        click.option("--dataset", type=click.Choice(DATASETS), help="Dataset layout and class list [voc12]."),
        click.option("--classes", "class_file", type=PATH, help="Class file: name<TAB>prompt per line."),
        click.option("--background", "background_file", type=PATH, help="Background prompts, one per line."),
        click.option("--prompt", "template", help="Prompt template with {} [a clean origami {}.]."),
        click.option("--attributes", type=PATH,
                     help="Attribute bank (the ExCEL repository's *_embedding_bank.pth) or a descriptor JSON "
                          "{class: [sentences]} clustered with this CLIP."),
        click.option("--clusters", type=int, help="K_a when clustering descriptors [VOC 112, COCO 224]."),
        click.option("--top-k", type=float, help="Kept fraction of the clusters per class [0.9]."),
        click.option("--attn-layers", type=int, help="Attention maps the refinement uses [6]."),
        click.option("--box-threshold", type=float, help="CAM box threshold [VOC 0.79, COCO 0.88]."),
    ]):
        func = decorator(func)
    return func


def _model_options(options: dict):
    from clipes.excel.options import ModelOptions

    return ModelOptions(**only_set(**{k: options.pop(k, None) for k in MODEL_KEYS}))


@click.command("train-excel")
@_model_flags
@click.option("--data-root", type=PATH, required=True, help="Dataset folder (VOC: the VOC2012 folder).")
@click.option("--split", type=PATH, required=True, help="Training ids (VOC: train_aug.txt).")
@click.option("--clip", "clip_source", required=True, help="CLIP ViT checkpoint (OpenAI name or path).")
@click.option("--work", type=PATH, help="Work folder; checkpoints in WORK/excel.")
@click.option("--out", type=PATH, help="Checkpoint folder [WORK/excel].")
@click.option("--labels", "labels_file", type=PATH, help="voc12: plain label file '<id> <class> ...' instead of XML.")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT [JPEGImages for voc12, else DATA_ROOT].")
@click.option("--masks-dir", type=PATH, help="Ground-truth masks steering the VOC crop [DATA_ROOT/SegmentationClassAug].")
@click.option("--crop-rule", type=click.Choice(["mask", "first"]),
              help="Crop window: the reference's mask-steered choice, or the first draw (no pixel label) [VOC mask].")
@click.option("--width", type=int, help="Decoder width [256].")
@click.option("--layers", type=int, help="Decoder blocks [3].")
@click.option("--iters", type=int, help="Iterations [VOC 30000, COCO 100000].")
@click.option("--batch", "batch_size", type=int, help="Images per iteration per process [4].")
@click.option("--crop", type=int, help="Crop size [320].")
@click.option("--lr", type=float, help="Decoder learning rate [1e-3].")
@click.option("--warmup-iters", type=int, help="Linear warm-up iterations [VOC 50, COCO 200].")
@click.option("--dynamic-from", type=int, help="First iteration of the dynamic CAM [14000 of 30000, scaled].")
@click.option("--self-affinity-from", type=int,
              help="First iteration whose affinity labels are the prediction's [24000 of 30000, scaled; -1 never].")
@click.option("--seed", type=int, help="Random seed [0, as the reference].")
@click.option("--jobs", type=int, help="Data-loading workers [2].")
@click.option("--checkpoint-interval", type=int, help="Iterations between checkpoints [2000].")
@click.option("--launcher", type=click.Choice(["none", "pytorch"]), help="pytorch under torchrun [none].")
@click.option("--resume/--no-resume", default=None, help="Continue from OUT's last checkpoint [resume].")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="mmengine config override (repeatable).")
@click.option("--verbose", is_flag=True, default=None, help="Also print mmengine's whole log on the console.")
@click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar.")
def train_excel(**options):
    """Train ExCEL's decoder on a frozen CLIP (resumes an interrupted run in the same OUT)."""
    from clipes.excel.options import TrainOptions
    from clipes.mmseg_ext.excel import run_train
    from clipes.mmseg_ext.runner import parse_options

    model = _model_options(options)
    options = only_set(**options)
    options["clip"] = options.pop("clip_source")
    options["options"] = parse_options(options.get("options") or ())
    out = run_train(TrainOptions(model=model, **options), echo=echo_main)
    echo_main(f"train-excel: done; checkpoints and logs in {out}")


def _infer_options(options: dict):
    from clipes.excel.runner import InferOptions

    # a clipes checkpoint records its model options; each flag given here overrides only itself
    given = only_set(**{k: options.pop(k, None) for k in MODEL_KEYS if k in options})
    options = only_set(**options)
    if "clip_source" in options:
        options["clip"] = options.pop("clip_source")
    if "size" in options:
        options["long_side"] = options.pop("size")
    return InferOptions(model=given, **options)


def _infer_flags(func):
    for decorator in reversed([
        click.option("--checkpoint", type=PATH, required=True,
                     help="ExCEL checkpoint (clipes iter_N.pth or the reference's model_iter_N.pth)."),
        click.option("--clip", "clip_source", help="CLIP checkpoint [the one a clipes checkpoint names]."),
        click.option("--device", help="cpu (default), cuda or cuda:N."),
        click.option("--size", type=int, help="Images are resized to SIZE x SIZE [320]."),
        click.option("--force", is_flag=True, default=None, help="Recompute into a folder made another way."),
        click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar."),
    ]):
        func = decorator(func)
    return func


@click.command("predict-excel")
@_infer_flags
@_model_flags
@click.option("--images", type=PATH, help="Image folder to predict.")
@click.option("--split", type=PATH, help="Only these ids [every image in IMAGES].")
@click.option("--work", type=PATH, help="Work folder: predictions go to WORK/predictions (scored by `clipes eval`).")
@click.option("--out", type=PATH, help="Prediction folder [WORK/predictions].")
@click.option("--crf/--no-crf", default=None, help="Dense CRF after the multi-scale logits [on, as published].")
@click.option("--jobs", type=int, help="CRF worker processes [1 on CPU, up to 8 on a GPU].")
def predict_excel(**options):
    """Segment images with a trained ExCEL: 320 x 320, scales 0.7, 1, 1.2, 1.5, flip, then the CRF."""
    from clipes.excel.runner import run_predict

    summary = run_predict(_infer_options(options), echo=click.echo)
    sys.exit(1 if summary.failed else 0)


@click.command("masks-excel")
@_infer_flags
@_model_flags
@click.option("--data-root", type=PATH, required=True, help="Dataset folder.")
@click.option("--split", type=PATH, required=True, help="Ids to make pseudo masks for.")
@click.option("--labels", "labels_file", type=PATH, help="voc12: plain label file instead of XML.")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT.")
@click.option("--work", type=PATH, help="Work folder: masks go to WORK/masks.")
@click.option("--out", type=PATH, help="Folder whose masks/ receives them [WORK].")
def masks_excel(**options):
    """ExCEL's pseudo labels from a trained model (dynamic CAM, decoder-guided refinement, PAR) into OUT/masks."""
    from clipes.excel.runner import run_masks

    summary = run_masks(_infer_options(options), echo=click.echo)
    sys.exit(1 if summary.failed else 0)


@click.command("cams-excel")
@_model_flags
@click.option("--data-root", type=PATH, required=True, help="Dataset folder.")
@click.option("--split", type=PATH, required=True, help="Ids to make CAMs for.")
@click.option("--clip", "clip_source", required=True, help="CLIP ViT checkpoint (OpenAI name or path).")
@click.option("--work", type=PATH, required=True, help="Work folder: CAMs go to WORK/cams.")
@click.option("--out", type=PATH, help="Folder whose masks/ receives the labels [WORK].")
@click.option("--labels", "labels_file", type=PATH, help="voc12: plain label file instead of XML.")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT.")
@click.option("--size", type=int, help="Images are resized to SIZE x SIZE [320].")
@click.option("--no-labels", "labels", flag_value=False, default=None, help="CAMs only, no training-free labels.")
@click.option("--device", help="cpu (default), cuda or cuda:N.")
@click.option("--force", is_flag=True, default=None, help="Recompute into a folder made another way.")
@click.option("--no-progress", "progress", flag_value=False, default=None, help="No progress bar.")
def cams_excel(**options):
    """Training-free ExCEL CAMs (one forward, no backward) into WORK/cams, and their labels into OUT/masks."""
    from clipes.excel.runner import CamOptions, run_cams

    model = _model_options(options)
    options = only_set(**options)
    options["clip"] = options.pop("clip_source")
    summary = run_cams(CamOptions(model=model, **options), echo=click.echo)
    sys.exit(1 if summary.failed else 0)
