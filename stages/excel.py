"""``clipes train-excel`` / ``predict-excel`` / ``masks-excel`` / ``cams-excel``: ExCEL (CVPR 2025).

mmseg/mmengine are imported only by ``train-excel``.
"""

from __future__ import annotations

import sys

import click

from stages.common import PATH
from stages.method_flags import (DATASET_FLAGS, DATASET_KEYS, DEVICE, FORCE, MASKS_FLAGS, NO_PROGRESS, PREDICT_FLAGS,
                                 SOURCE_FLAGS, TRAIN_RUN_FLAGS, flags, given_options, infer, infer_flags, pop_model,
                                 train, train_input_flags)

MODEL_KEYS = DATASET_KEYS + ("attributes", "clusters", "top_k", "width", "layers", "attn_layers", "box_threshold",
                             "lvc_pass")

_model_flags = flags(
    DATASET_FLAGS,
    click.option("--attributes", type=PATH,
                 help="Attribute bank (the ExCEL repository's *_embedding_bank.pth) or a descriptor JSON "
                      "{class: [sentences]} clustered with this CLIP."),
    click.option("--clusters", type=int, help="K_a when clustering descriptors [VOC 112, COCO 224]."),
    click.option("--top-k", type=float, help="Kept fraction of the clusters per class [0.9]."),
    click.option("--attn-layers", type=int, help="Attention maps the refinement uses [6]."),
    click.option("--box-threshold", type=float, help="CAM box threshold [VOC 0.79, COCO 0.88]."),
    click.option("--lvc-pass", type=click.Choice(["incremental", "full"]),
                 help="Dynamic CAM: from the first forward's values [incremental], or the reference's second "
                      "forward (full)."),
)
SIZE = click.option("--size", type=int, help="Images are resized to SIZE x SIZE [320].")
_infer_flags = infer_flags("ExCEL", SIZE)


def _model_options(options: dict):
    from clipes.excel.options import ModelOptions

    return ModelOptions(**pop_model(options, MODEL_KEYS))


@click.command("train-excel")
@_model_flags
@train_input_flags("excel")
@SOURCE_FLAGS
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
@TRAIN_RUN_FLAGS
def train_excel(**options):
    """Train ExCEL's decoder on a frozen CLIP (resumes an interrupted run in the same OUT)."""
    from clipes.excel.options import TrainOptions
    from clipes.mmseg_ext.excel import run_train

    train("train-excel", options, _model_options(options), TrainOptions, run_train)


@click.command("predict-excel")
@_infer_flags
@_model_flags
@PREDICT_FLAGS
def predict_excel(**options):
    """Segment images with a trained ExCEL: 320 x 320, scales 0.7, 1, 1.2, 1.5, flip, then the CRF."""
    from clipes.excel.runner import InferOptions, run_predict

    infer(run_predict, InferOptions, options, MODEL_KEYS, {"size": "long_side"})


@click.command("masks-excel")
@_infer_flags
@_model_flags
@MASKS_FLAGS
def masks_excel(**options):
    """ExCEL's pseudo labels from a trained model (dynamic CAM, decoder-guided refinement, PAR) into OUT/masks."""
    from clipes.excel.runner import InferOptions, run_masks

    infer(run_masks, InferOptions, options, MODEL_KEYS, {"size": "long_side"})


@click.command("cams-excel")
@_model_flags
@click.option("--data-root", type=PATH, required=True, help="Dataset folder.")
@click.option("--split", type=PATH, required=True, help="Ids to make CAMs for.")
@click.option("--clip", "clip_source", required=True, help="CLIP ViT checkpoint (OpenAI name or path).")
@click.option("--work", type=PATH, required=True, help="Work folder: CAMs go to WORK/cams.")
@click.option("--out", type=PATH, help="Folder whose masks/ receives the labels [WORK].")
@click.option("--labels", "labels_file", type=PATH, help="voc12: plain label file instead of XML.")
@click.option("--images-dir", help="Image folder relative to DATA_ROOT.")
@SIZE
@click.option("--no-labels", "labels", flag_value=False, default=None, help="CAMs only, no training-free labels.")
@DEVICE
@FORCE
@NO_PROGRESS
def cams_excel(**options):
    """Training-free ExCEL CAMs (one forward, no backward) into WORK/cams, and their labels into OUT/masks."""
    from clipes.excel.runner import CamOptions, run_cams

    model = _model_options(options)
    summary = run_cams(CamOptions(model=model, **given_options(options)), echo=click.echo)
    sys.exit(1 if summary.failed else 0)
