"""Building WeakCLIP models for the tests: the golden's reduced widths, and tiny CPU configs."""

from __future__ import annotations

from pathlib import Path

import torch

MEAN = [123.675, 116.28, 103.53]
STD = [58.395, 57.12, 57.375]


def model_config(clip: Path, crop: int = 384, width: int = 32, feature: int = 48, stride: int = 256,
                 norm: str = "BN", **extra) -> dict:
    """The golden's model: the released config with co-attention width 32, FPN / head width 32."""
    return dict(
        type="WeakCLIP", clip=str(clip), label_space="voc", input_resolution=crop, adapter_norm=norm,
        coattention=dict(width=width, heads=4, layers=3, dropout=0.1),
        neck=dict(type="FPN", in_channels=None, out_channels=width, num_outs=4),
        decode_head=dict(type="FPNHead", in_channels=[width] * 4, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32],
                         channels=width, dropout_ratio=0.1, num_classes=None,
                         norm_cfg=dict(type=norm, requires_grad=True),
                         align_corners=False, loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                                               loss_weight=1.0)),
        feature_size=(feature, feature), test_cfg=dict(crop_size=crop, stride=stride),
        data_preprocessor=dict(type="SegDataPreProcessor", mean=MEAN, std=STD, bgr_to_rgb=True, pad_val=0,
                               seg_pad_val=255, size=(crop, crop)),
        **extra)


def build(config: dict):
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS

    import clipes.mmseg_ext  # noqa: F401  (registers WeakCLIP)

    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(config)
