"""WeCLIP+'s pieces: dice, the guarded cross supervision, ordered labels, options, checkpoint forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipes.errors import UserError
from clipes.weclip.data import batch_classes
from clipes.weclip.losses import seg_loss
from clipes.weclip.runner import recorded_options
from clipes.weclip_plus import schedule
from clipes.weclip_plus.checkpoint import read_decoder_state
from clipes.weclip_plus.decoder import WeCLIPPlusDecoder
from clipes.weclip_plus.losses import dice_loss
from clipes.weclip_plus.options import ModelOptions, TrainOptions


def test_dice_over_every_channel_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    labels = torch.randint(0, 2, (2, 3, 5))  # channels 2 and 3 absent: their dice is ~0 (the floor quirk)
    p = F.softmax(logits, dim=1)
    dices = []
    for c in range(4):
        y = (labels == c).float()
        dices.append(2 * (p[:, c] * y).sum() / (p[:, c].sum() + y.sum() + 1e-7))
    expected = 1 - torch.stack(dices).mean()
    assert torch.allclose(dice_loss(logits, labels), expected, atol=1e-6)
    assert float(dice_loss(logits, labels)) > 1 - 2 / 4 - 1e-6  # at most 2 of 4 channels can score
    ignored = labels.clone()
    ignored[0, 0, 0] = 255
    keep = torch.ones_like(labels, dtype=torch.bool)
    keep[0, 0, 0] = False
    dices = []
    for c in range(4):
        y = ((ignored == c) & keep).float()
        pc = p[:, c] * keep
        dices.append(2 * (pc * y).sum() / (pc.sum() + y.sum() + 1e-7))
    assert torch.allclose(dice_loss(logits, ignored), 1 - torch.stack(dices).mean(), atol=1e-6)


def test_the_cross_supervision_guard_equals_the_reference_where_it_is_finite():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    both = torch.randint(0, 3, (2, 4, 4))
    both[0, 0, 0], both[0, 0, 1] = 0, 1
    loss, bg, fg = seg_loss(logits, both)
    reference = (F.cross_entropy(logits, torch.where(both == 0, both, 255), ignore_index=255)
                 + F.cross_entropy(logits, torch.where(both > 0, both, 255), ignore_index=255)) / 2
    assert torch.allclose(loss, reference)
    no_background = torch.ones(2, 4, 4, dtype=torch.long)  # an argmax map without class 0: NaN in the reference
    assert torch.isnan(F.cross_entropy(logits, torch.where(no_background == 0, no_background, 255),
                                       ignore_index=255))
    guarded, _, _ = seg_loss(logits, no_background)
    assert torch.isfinite(guarded)
    guarded.backward()
    assert torch.isfinite(logits.grad).all()


def test_ordered_labels_survive_the_batch():
    rows = torch.tensor([[14, 11, -1, -1], [6, 5, 1, 4]])
    assert batch_classes(rows, ordered=True) == [[14, 11], [6, 5, 1, 4]]
    assert batch_classes(torch.tensor([[0, 1, 0, 1]])) == [[1, 3]]


def test_options_follow_the_dataset_and_the_schedule_scales():
    voc, coco = ModelOptions().resolved(), ModelOptions(dataset="coco14").resolved()
    assert (voc.cam_block, voc.late_blocks, voc.boxes, voc.box_threshold) == (2, 6, False, 0.4)
    assert (coco.cam_block, coco.late_blocks, coco.boxes, coco.box_threshold) == (1, 8, True, 0.7)
    assert TrainOptions().resolved_override() == 18000 and TrainOptions(iters=300).resolved_override() == 180
    assert TrainOptions(model=ModelOptions(dataset="coco14")).resolved_batch() == 8
    assert schedule.LR == pytest.approx(2e-4)
    meta = {"model": {"dataset": "voc12", "class_file": "/x/classes.tsv", "late_blocks": 6, "cam_block": 2}}
    given = recorded_options(meta, 21, {"dataset": "coco14"}, ModelOptions,
                             ("cam_block", "late_blocks", "boxes", "box_threshold"), "WeCLIP+")
    assert (given.late_blocks, given.cam_block, str(given.class_file)) == (8, 1, "/x/classes.tsv")
    with pytest.raises(UserError, match="unknown WeCLIP\\+ model option"):
        recorded_options(meta, 21, {"switch_iter": 3}, ModelOptions, (), "WeCLIP+")


def test_checkpoint_forms(tmp_path):
    state = WeCLIPPlusDecoder(32, 16, 8, 5, layers=1).state_dict()
    torch.save({"state_dict": {f"decoder.{k}": v for k, v in state.items()}, "meta": {"weclipplus": {"x": 1}}},
               tmp_path / "clipes.pth")
    got, meta, kind = read_decoder_state(tmp_path / "clipes.pth")
    assert kind == "clipes" and meta == {"x": 1} and got.keys() == state.keys()
    torch.save({"model": {**{f"module.{k}": v for k, v in state.items()}, "module.encoder.x": torch.zeros(1),
                          "module.dino_encoder.y": torch.zeros(1)}}, tmp_path / "ref.pth")
    got, meta, kind = read_decoder_state(tmp_path / "ref.pth")
    assert kind == "reference" and meta == {} and got.keys() == state.keys()
    torch.save({k: v for k, v in state.items() if not k.startswith("decoder.linear_pred")}, tmp_path / "cut.pth")
    with pytest.raises(UserError, match="incomplete WeCLIP\\+ decoder"):
        read_decoder_state(tmp_path / "cut.pth")
