"""clipes.mmseg_ext: the loss against hand computations, the DeepLab-v2 head, confidence alignment
through mmseg's transforms, the mmcv.ops stand-in and the checkpoint hook."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS, TRANSFORMS

import clipes.mmseg_ext  # noqa: F401  (registers into mmseg)
from clipes.mmseg_ext.heads import DeepLabV2Head, stack_confidence
from clipes.mmseg_ext.hooks import plain_message_hub, restore_message_hub

init_default_scope("mmseg")


def _batch(seed=0, b=2, c=4, h=5, w=6):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, c, h, w, generator=g)
    label = torch.randint(0, c, (b, h, w), generator=g)
    label[0, 0, :3] = 255
    label[1, 2:4, 1] = 255
    confidence = torch.rand(b, h, w, generator=g)
    return logits, label, confidence


def _hand(logits, label, confidence, mode, balanced):
    """Per-pixel loops in float64: -log softmax at the label, weighted as documented."""
    x = logits.double().numpy()
    terms = []  # (class, weight, ce)
    for bi in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                y = int(label[bi, i, j])
                if y == 255:
                    continue
                z = x[bi, :, i, j]
                ce = np.log(np.exp(z - z.max()).sum()) + z.max() - z[y]
                weight = float(confidence[bi, i, j]) if mode == "soft" else 1.0
                terms.append((y, weight, ce))
    assert terms
    if not balanced:
        return sum(w * ce for _, w, ce in terms) / sum(w for _, w, _ in terms)
    means = []
    for cls in sorted({y for y, _, _ in terms}):
        mine = [(w, ce) for y, w, ce in terms if y == cls]
        means.append(sum(w * ce for w, ce in mine) / sum(w for w, _ in mine))
    return sum(means) / len(means)


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("balanced", [False, True])
def test_loss_from_registry_equals_hand_computation(mode, balanced):
    loss = MODELS.build(dict(type="ConfidenceCrossEntropyLoss", mode=mode, class_balanced=balanced,
                             loss_weight=0.5, loss_name="loss_conf"))
    logits, label, confidence = _batch()
    value = loss(logits, label, weight=confidence, ignore_index=255)
    assert loss.loss_name == "loss_conf"
    assert value.item() == pytest.approx(0.5 * _hand(logits, label, confidence, mode, balanced), rel=1e-5)


def test_hard_mode_is_cross_entropy_ignoring_255_and_ignores_confidence():
    loss = MODELS.build(dict(type="ConfidenceCrossEntropyLoss", mode="hard"))
    logits, label, confidence = _batch(1)
    expected = F.cross_entropy(logits, label, ignore_index=255)
    assert loss(logits, label, weight=confidence).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss(logits, label).item() == pytest.approx(expected.item(), rel=1e-6)
    soft = MODELS.build(dict(type="ConfidenceCrossEntropyLoss", mode="soft"))
    assert soft(logits, label, weight=confidence).item() != pytest.approx(expected.item(), rel=1e-3)


def test_soft_mode_needs_confidence_and_bad_mode_is_refused():
    logits, label, _ = _batch()
    with pytest.raises(ValueError, match="confidence"):
        MODELS.build(dict(type="ConfidenceCrossEntropyLoss", mode="soft"))(logits, label)
    with pytest.raises(ValueError, match="mode"):
        MODELS.build(dict(type="ConfidenceCrossEntropyLoss", mode="fuzzy"))


def test_all_ignored_gives_zero_with_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    value = MODELS.build(dict(type="ConfidenceCrossEntropyLoss"))(logits, torch.full((1, 2, 2), 255))
    value.backward()
    assert value.item() == 0.0 and logits.grad is not None


def test_deeplab_v2_head_sums_four_dilated_classifiers():
    head = MODELS.build(dict(type="DeepLabV2Head", in_channels=8, in_index=0, num_classes=5,
                             dilations=(1, 2, 3, 4)))
    head.init_weights()
    assert isinstance(head, DeepLabV2Head) and not hasattr(head, "conv_seg")
    assert [b.dilation[0] for b in head.branches] == [1, 2, 3, 4]
    assert all(float(b.bias.detach().abs().max()) == 0.0 for b in head.branches)
    x = torch.randn(2, 8, 9, 11)
    expected = sum(F.conv2d(x, b.weight, b.bias, padding=r, dilation=r) for b, r in zip(head.branches, (1, 2, 3, 4)))
    out = head([x])
    assert out.shape == (2, 5, 9, 11)
    torch.testing.assert_close(out, expected)


def test_stack_confidence_pads_bottom_right_like_the_label():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    samples = []
    for h, w in ((3, 4), (2, 5)):
        sample = SegDataSample()
        sample.gt_confidence = PixelData(data=torch.full((1, h, w), 255, dtype=torch.uint8))
        samples.append(sample)
    out = stack_confidence(samples, (4, 6))
    assert out.shape == (2, 4, 6)
    assert out[0, :3, :4].eq(1).all() and out[0, 3:].eq(0).all() and out[0, :, 4:].eq(0).all()
    assert out[1, :2, :5].eq(1).all() and out[1, 2:].eq(0).all()
    assert stack_confidence([SegDataSample()], (4, 6)) is None


def test_confidence_stays_aligned_through_resize_crop_flip_and_pad(tmp_path):
    """Confidence is a known function of the label; after the training transforms it still is."""
    from PIL import Image

    from clipes.store import maskstore

    rng = np.random.default_rng(0)
    label = np.zeros((60, 80), np.uint8)
    label[10:40, 5:50] = 1
    label[30:55, 45:75] = 2
    label[:, 78:] = 255
    code = np.array([40, 120, 200] + [0] * 252 + [250], np.uint8)  # label -> confidence byte
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    maskstore.write_mask(tmp_path / "a.png", label)
    Image.fromarray(code[label]).save(tmp_path / "c.png")
    pipeline = [TRANSFORMS.build(t) for t in (
        dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="LoadConfidence"),
        dict(type="RandomResize", scale=(120, 90), ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type="RandomCrop", crop_size=(48, 64)), dict(type="RandomFlip", prob=0.5),
        dict(type="Pad", size=(72, 56)), dict(type="PackSegInputsWithConfidence"))]  # mmcv's Pad: (w, h)
    flips, mixed = set(), 0
    for seed in range(12):
        np.random.seed(seed)
        results = dict(img_path=str(tmp_path / "a.jpg"), seg_map_path=str(tmp_path / "a.png"),
                       confidence_path=str(tmp_path / "c.png"), reduce_zero_label=False, seg_fields=[])
        for transform in pipeline:
            results = transform(results)
        sample = results["data_samples"]
        flips.add(sample.flip)
        seg = sample.gt_sem_seg.data[0].numpy()
        conf = stack_confidence([sample], seg.shape)[0].numpy()
        h, w = sample.gt_confidence.data.shape[-2:]
        inside = np.zeros(seg.shape, bool)
        inside[:h, :w] = True
        assert inside.sum() > 0
        mixed += len(np.unique(seg[inside])) >= 2
        np.testing.assert_allclose(conf[inside], code[seg[inside]] / 255.0, atol=1e-6)
        assert (seg[~inside] == 255).all()
    assert flips == {True, False} and mixed >= 6


def test_mmcv_ops_standin_point_sample():
    import mmcv.ops

    from clipes.mmseg_ext.compat import _point_sample

    x = torch.arange(16.0).view(1, 1, 4, 4)
    points = torch.tensor([[[0.125, 0.125], [0.875, 0.625]]])  # pixel centres (0, 0) and (3, 2)
    out = _point_sample(x, points, align_corners=False)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 11.0]]]))
    torch.testing.assert_close(mmcv.ops.point_sample(x, points), out)


def test_message_hub_round_trip_is_plain_data():
    from mmengine.logging import HistoryBuffer

    state = {"log_scalars": {"train/loss": HistoryBuffer([1.0, 0.5], [1, 1], 10)},
             "runtime_info": {"iter": np.int64(7), "text": "x"}, "resumed_keys": {"train/loss": True}}
    plain = plain_message_hub(state)
    assert plain["runtime_info"]["iter"] == 7 and type(plain["runtime_info"]["iter"]) is int
    restored = restore_message_hub(plain)["log_scalars"]["train/loss"]
    assert isinstance(restored, HistoryBuffer) and restored.mean() == pytest.approx(0.75)
    stream = io.BytesIO()
    torch.save(plain, stream)
    stream.seek(0)
    loaded = restore_message_hub(torch.load(stream, weights_only=True))  # no unsafe globals needed
    assert loaded["log_scalars"]["train/loss"].mean() == pytest.approx(0.75)
    with pytest.raises(Exception):  # mmengine's own form needs getattr, which a safe load refuses
        stream = io.BytesIO()
        torch.save(state, stream)
        stream.seek(0)
        torch.load(stream, weights_only=True)
