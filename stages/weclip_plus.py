"""``clipes train-weclipplus`` / ``predict-weclipplus`` / ``masks-weclipplus``: WeCLIP+ (TPAMI 2025).

mmseg/mmengine are imported only by ``train-weclipplus``.
"""

from __future__ import annotations

import click

from stages.method_flags import (DATASET_FLAGS, DATASET_KEYS, MASKS_FLAGS, PREDICT_FLAGS, SOURCE_FLAGS,
                                 TRAIN_RUN_FLAGS, flags, infer, infer_flags, pop_model, train, train_input_flags)

MODEL_KEYS = DATASET_KEYS + ("width", "layers", "grad_method", "fp16_out_proj", "late_blocks", "box_threshold")

_model_flags = flags(
    DATASET_FLAGS,
    click.option("--grad", "grad_method", type=click.Choice(["analytic", "autograd"]),
                 help="CAM gradient: closed form, all classes at once [analytic], or the reference's autograd."),
    click.option("--fp16-out-proj/--fp32-out-proj", "fp16_out_proj", default=None,
                 help="The reference's fp16 attention out-projections [on]."),
    click.option("--late-blocks", type=int, help="RFM+ candidate blocks [VOC 6, COCO 8]."),
    click.option("--box-threshold", type=float, help="CAM box threshold [VOC 0.4, COCO 0.7]."),
)
_infer_flags = infer_flags(
    "WeCLIP+",
    click.option("--dino", help="DINOv2 weights [the ones a clipes checkpoint names]."),
    click.option("--long-side", type=int, help="Images are resized to this long side [512]."),
)


@click.command("train-weclipplus")
@_model_flags
@train_input_flags("weclipplus")
@click.option("--dino", required=True, help="DINOv2 weights: hub .pth, .safetensors or a Hugging Face folder.")
@SOURCE_FLAGS
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
@TRAIN_RUN_FLAGS
def train_weclipplus(**options):
    """Train WeCLIP+'s decoder and heads on a frozen CLIP and DINOv2 (resumes an interrupted run in the same OUT)."""
    from clipes.mmseg_ext.weclip_plus import run_train
    from clipes.weclip_plus.options import ModelOptions, TrainOptions

    train("train-weclipplus", options, ModelOptions(**pop_model(options, MODEL_KEYS)), TrainOptions, run_train)


@click.command("predict-weclipplus")
@_infer_flags
@_model_flags
@PREDICT_FLAGS
def predict_weclipplus(**options):
    """Segment images with a trained WeCLIP+: long side 512, scales 1 and 1.5, flip, both branches, then the CRF."""
    from clipes.weclip_plus.runner import InferOptions, run_predict

    infer(run_predict, InferOptions, options, MODEL_KEYS)


@click.command("masks-weclipplus")
@_infer_flags
@_model_flags
@MASKS_FLAGS
def masks_weclipplus(**options):
    """WeCLIP+'s online pseudo labels (RFM+ and PAR) at each image's size, into OUT/masks."""
    from clipes.weclip_plus.runner import InferOptions, run_masks

    infer(run_masks, InferOptions, options, MODEL_KEYS)
