"""Every config in segmenter_configs/ parses (mmseg:: bases included) and its model builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

import clipes.mmseg_ext  # noqa: F401
from clipes.mmseg_ext.runner import LOSS_TYPE, _losses, load_config

CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "segmenter_configs").glob("*.py"))
EXPECTED = {"deeplabv2": "DeepLabV2Head", "deeplabv3plus": "ConfidenceDepthwiseSeparableASPPHead"}


def test_configs_are_found():
    assert len(CONFIGS) >= 5, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_and_builds(path):
    init_default_scope("mmseg")
    cfg = load_config(path)
    assert cfg.custom_imports["imports"] == ["clipes.mmseg_ext"]
    assert cfg.train_dataloader.dataset.type == "PseudoMaskDataset"
    assert [t["type"] for t in cfg.train_dataloader.dataset.pipeline][-1] == "PackSegInputsWithConfidence"
    assert "LoadConfidence" in [t["type"] for t in cfg.train_dataloader.dataset.pipeline]
    assert _losses(cfg.model) and all(loss["type"] == LOSS_TYPE for loss in _losses(cfg.model))
    expected_classes = 81 if "coco14" in path.stem else 21
    if "tiny" in path.stem:  # the class count comes from the data
        assert cfg.model.decode_head.num_classes is None
        cfg.model.decode_head.num_classes = expected_classes
    assert cfg.model.decode_head.num_classes == expected_classes
    if "r101" in path.stem:
        assert cfg.model.backbone.depth == 101
    model = MODELS.build(cfg.model)
    assert type(model.decode_head).__name__ == EXPECTED[path.stem.split("_")[0]]
    assert model.decode_head.num_classes == expected_classes
