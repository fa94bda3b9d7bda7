"""``clipes train-weclip`` / ``predict-weclip`` / ``masks-weclip``: WeCLIP (CVPR 2024) on clipes' folders.

mmseg/mmengine are imported only by ``train-weclip``.
"""

from __future__ import annotations

import click

from stages.method_flags import (DATASET_FLAGS, DATASET_KEYS, MASKS_FLAGS, PREDICT_FLAGS, SOURCE_FLAGS,
                                 TRAIN_RUN_FLAGS, flags, infer, infer_flags, pop_model, train, train_input_flags)

MODEL_KEYS = DATASET_KEYS + ("width", "grad_method", "fp16_out_proj", "late_blocks", "box_threshold")

_model_flags = flags(
    DATASET_FLAGS,
    click.option("--grad", "grad_method", type=click.Choice(["analytic", "autograd"]),
                 help="CAM gradient: closed form, all classes at once [analytic], or the reference's autograd."),
    click.option("--fp16-out-proj/--fp32-out-proj", "fp16_out_proj", default=None,
                 help="The reference's fp16 attention out-projections [on]."),
    click.option("--late-blocks", type=int, help="Late-phase RFM candidate blocks [VOC 6, COCO 10]."),
    click.option("--box-threshold", type=float, help="CAM box threshold [VOC 0.4, COCO 0.7]."),
)
_infer_flags = infer_flags(
    "WeCLIP", click.option("--long-side", type=int, help="Images are resized to this long side [512]."))


@click.command("train-weclip")
@_model_flags
@train_input_flags("weclip")
@SOURCE_FLAGS
@click.option("--width", type=int, help="Decoder width [256].")
@click.option("--iters", type=int, help="Iterations [VOC 30000, COCO 80000].")
@click.option("--batch", "batch_size", type=int, help="Images per iteration per process [4].")
@click.option("--crop", type=int, help="Crop size [320].")
@click.option("--lr", type=float, help="Decoder learning rate [2e-3].")
@click.option("--switch-iter", type=int, help="First iteration of the decoder-guided RFM [9145 of 30000, scaled].")
@click.option("--warmup-iters", type=int, help="Linear warm-up iterations [50].")
@click.option("--seed", type=int, help="Random seed [1].")
@TRAIN_RUN_FLAGS
def train_weclip(**options):
    """Train WeCLIP's decoder with online RFM pseudo labels (resumes an interrupted run in the same OUT)."""
    from clipes.mmseg_ext.weclip import run_train
    from clipes.weclip.options import ModelOptions, TrainOptions

    train("train-weclip", options, ModelOptions(**pop_model(options, MODEL_KEYS)), TrainOptions, run_train)


@click.command("predict-weclip")
@_infer_flags
@_model_flags
@PREDICT_FLAGS
def predict_weclip(**options):
    """Segment images with a trained WeCLIP: long side 512, scales 1 and 0.75, flip, then the CRF."""
    from clipes.weclip.runner import InferOptions, run_predict

    infer(run_predict, InferOptions, options, MODEL_KEYS)


@click.command("masks-weclip")
@_infer_flags
@_model_flags
@MASKS_FLAGS
def masks_weclip(**options):
    """WeCLIP's online pseudo labels (RFM + PAR, late phase) at each image's size, into OUT/masks."""
    from clipes.weclip.runner import InferOptions, run_masks

    infer(run_masks, InferOptions, options, MODEL_KEYS)
