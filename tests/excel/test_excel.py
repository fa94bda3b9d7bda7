"""ExCEL's pieces on their own: the attribute bank and its aggregation, the mask-steered crop, the
schedule's phases, the batch-coupled affinity and the inference's averaging."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from clipes.errors import UserError
from clipes.excel import attributes, schedule
from clipes.excel.data import augment, crop_window
from clipes.excel.decoder import excel_affinity, excel_decoder
from clipes.excel.model import ExCEL, truncated_guide

from conftest import make_tiny_clip


def test_masked_count_keeps_the_float_quirk():
    assert [attributes.masked_count(k) for k in (112, 224, 80, 20, 10)] == [11, 22, 7, 1, 0]


def test_aggregate_adds_the_weighted_centres_and_refuses_nan_banks():
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)  # 3 classes, 2 background rows
    centres = torch.randn(8, 20)
    out = attributes.aggregate(text, centres, 3)
    weights = attributes.attribute_weights(text, centres, 3)
    assert tuple(out.shape) == (5, 8) and torch.allclose(out.norm(dim=1), torch.ones(5))
    assert torch.allclose(out[3:], text[3:], atol=1e-6)  # background rows: only renormalised
    assert ((weights == 0).sum(dim=1) == 1).all()  # m = int(0.0999... x 20) = 1 masked per class
    expected = torch.nn.functional.normalize(text[:3] + weights @ centres.t(), dim=1)
    assert torch.allclose(out[:3], expected, atol=1e-6)
    with pytest.raises(UserError, match="NaN"):
        attributes.aggregate(text, centres[:, :10], 3)
    with pytest.raises(UserError, match="6-dimensional"):
        attributes.aggregate(text, centres[:6], 3)


def test_bank_files_read_as_the_reference_ships_them(tmp_path):
    centres, flags = torch.randn(8, 12), torch.zeros(3, 12)
    torch.save([centres, flags], tmp_path / "bank.pth")  # the ExCEL repository's layout
    got, got_flags = attributes.read_bank(tmp_path / "bank.pth")
    assert torch.equal(got, centres) and torch.equal(got_flags, flags)
    torch.save({"centres": centres}, tmp_path / "dict.pth")
    with pytest.raises(UserError, match="expected \\[centres, flags\\]"):
        attributes.read_bank(tmp_path / "dict.pth")
    with pytest.raises(UserError, match="not found"):
        attributes.read_bank(tmp_path / "none.pth")


def test_descriptor_banks_are_cached_per_clip_and_file(tmp_path):
    clip = make_tiny_clip(width=64, layers=2)
    names = ["cat", "dog", "bird"]
    path = tmp_path / "d.json"
    path.write_text(json.dumps({n: [f"A {n} Sentence {i}." for i in range(5)] for n in reversed(names)}))
    said = []
    centres, flags, record = attributes.bank_for(clip, "sha-a", path, names, 12, tmp_path, said.append)
    assert tuple(centres.shape) == (clip.text_projection.shape[1], 12) and tuple(flags.shape) == (3, 12)
    assert flags.sum(dim=1).min() >= 1 and said
    said.clear()
    again, _, _ = attributes.bank_for(clip, "sha-a", path, names, 12, tmp_path, said.append)
    assert torch.equal(again, centres) and not said  # from the cache
    attributes.bank_for(clip, "sha-b", path, names, 12, tmp_path, said.append)
    assert said  # another CLIP: clustered again
    embeddings = attributes.sentence_embeddings(clip, ["A CAT."])
    assert torch.allclose(embeddings, attributes.sentence_embeddings(clip, ["a cat."]))  # lower-cased
    with pytest.raises(UserError, match="no sentences for class\\(es\\) fish"):
        attributes.read_descriptors(path, names + ["fish"])


def test_the_crop_is_steered_by_the_mask_and_only_by_it():
    image = np.zeros((400, 400, 3), np.uint8)
    mask = np.zeros((400, 400), np.uint8)
    mask[:, 300:] = 3  # a window wholly left of column 300 is all background: rejected
    def mixed_share(steer):
        random.seed(1)
        ratios = []
        for _ in range(200):
            top, left = crop_window((400, 400), 100, mask if steer else None)
            window = mask[top:top + 100, left:left + 100]
            ratios.append(max(np.bincount(window.ravel())) / window.size)
        return float(np.mean(np.array(ratios) < 0.75))

    # one draw is mixed with p = 75/301; ten tries make it 1 - (226/301)^10 = 0.94
    assert mixed_share(True) > 0.8 and mixed_share(False) < 0.35
    random.seed(1)
    np.random.seed(1)
    crop, window = augment(image, mask, 64)
    assert crop.shape == (64, 64, 3) and window.shape == (64, 64)
    random.seed(1)
    np.random.seed(1)
    crop, window = augment(image, None, 64)
    assert crop.shape == (64, 64, 3) and window is None


def test_phases_scale_with_the_run_length():
    assert schedule.dynamic_from("voc12", 30000) == 14000 and schedule.self_affinity_from("voc12", 30000) == 24000
    assert schedule.dynamic_from("coco14", 100000) == 30000 and schedule.self_affinity_from("coco14", 100000) is None
    assert schedule.dynamic_from("voc12", 300) == 140 and schedule.LR == pytest.approx(1e-3)


def test_affinity_is_coupled_across_the_batch():
    torch.manual_seed(0)
    fused = torch.randn(2, 8, 3, 3)
    together = excel_affinity(fused)
    alone = excel_affinity(fused[:1])
    assert tuple(together.shape) == (2, 9, 9) and not torch.allclose(together[0], alone[0])  # quirk, spec 8.3
    diag = torch.diagonal(together, dim1=1, dim2=2)
    assert (diag > 0.5).all()  # cosine 1 is above any batch mean


def test_guide_truncates_like_uint8():
    images = torch.full((1, 3, 2, 2), (200.999 - 123.675) / 58.395)
    assert torch.allclose(truncated_guide(images)[0, 0], torch.full((2, 2), 200 / 255.0))


def test_inference_averages_scale_one_unflipped():
    torch.manual_seed(0)
    clip = make_tiny_clip(width=64, layers=6, grid=4)
    decoder = excel_decoder(64, 6, 16, 4).eval()
    model = ExCEL(clip.visual.float(), None, 3, decoder, mode="val").eval()
    image = torch.randn(1, 3, 50, 70)
    logits = model.predict_logits(image, 64, (1.0,))
    x = torch.nn.functional.interpolate(image, size=[64, 64], mode="bilinear", align_corners=False)
    direct = torch.nn.functional.interpolate(model.segment(x), size=(50, 70), mode="bilinear", align_corners=False)
    assert torch.allclose(logits, direct, atol=1e-6)
    both = model.predict_logits(image, 64, (1.0, 1.5))
    assert tuple(both.shape) == (1, 4, 50, 70) and not torch.allclose(both, logits)
    fifth = model.predict_logits(image, 64, (1.0,), fifth=True)
    assert tuple(fifth.shape) == (1, 4, 10, 14)
    with pytest.raises(ValueError, match="without text"):
        model.cams(model.clip(x))
