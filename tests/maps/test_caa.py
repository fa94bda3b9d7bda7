"""CAA pieces on hand-built inputs and on the golden fixture (spec section 5)."""

import numpy as np
import pytest
import torch

from clipes.backbones.vit import DenseViT
from clipes.data.images import load_image, to_clip_tensor
from clipes.maps.caa import affinity_from_attention, box_mask, refine_cams, refine_on_grid, sinkhorn, upsample_maps

from conftest import GOLDEN, GOLDEN_IDS


def test_sinkhorn_alternates_columns_then_rows():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    t = a.clone()
    for _ in range(3):
        t = t / t.sum(0, keepdim=True)
        t = t / t.sum(1, keepdim=True)
    out = sinkhorn(a, 3)
    assert torch.allclose(out, t) and torch.allclose(out.sum(1), torch.ones(2, dtype=torch.float64))
    assert not torch.allclose(sinkhorn(a, 1), t)  # the number of rounds matters


def test_affinity_is_symmetric_and_squared():
    a = torch.rand(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.01
    s = sinkhorn(a, 3)
    s = (s + s.t()) / 2
    out = affinity_from_attention(a)
    assert torch.allclose(out, s @ s) and torch.allclose(out, out.t())
    assert torch.allclose(affinity_from_attention(a, power=1), s)


def test_refine_on_grid_masks_source_columns():
    t = torch.rand(6, 6, generator=torch.Generator().manual_seed(1))
    cams = torch.rand(2, 2, 3, generator=torch.Generator().manual_seed(2))
    masks = torch.tensor([[[1, 0, 1], [0, 0, 1]], [[0, 0, 0], [1, 1, 1]]], dtype=torch.float32)
    out = refine_on_grid(t, cams, masks)
    assert torch.allclose(refine_on_grid(t, cams, masks, power=3), refine_on_grid(t @ t @ t, cams, masks), atol=1e-5)
    for k in range(2):
        explicit = (t * masks[k].reshape(1, 6)) @ cams[k].reshape(6, 1)  # the reference's form
        assert torch.allclose(out[k].reshape(6, 1), explicit, atol=1e-6)


def test_box_mask_never_covers_last_row_or_column():
    cam = np.zeros((5, 6), np.float32)
    cam[2:, 3:] = 0.9  # a blob touching the bottom-right corner
    mask, boxes = box_mask(cam, 0.4)
    assert boxes == [(3, 2, 5, 4)]
    expected = np.zeros((5, 6), np.uint8)
    expected[2:4, 3:5] = 1
    np.testing.assert_array_equal(mask, expected)


def test_box_mask_threshold_is_strictly_above_int_of_fraction_of_uint8_max():
    cam = np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.4, 0.4, 0.0], [0.0, 0.99, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]],
                   np.float32)
    # uint8 values: 0.4 -> 102 > int(0.4 * 252) = 100 -> inside; 0.1 -> 25 -> outside.
    mask, boxes = box_mask(cam, 0.4)
    assert boxes and mask.sum() == 4 and mask[1:3, 1:3].all()
    assert box_mask(cam, 0.45)[0][1, 1] == 0  # 102 is not above int(0.45 * 252) = 113


def test_box_mask_one_patch_wide_border_contour_and_zero_cam_are_empty():
    cam = np.zeros((4, 4), np.float32)
    cam[:, 3] = 0.8  # only the last column is hot: x0 = 3, x1 = min(4, 3) -> empty box
    assert box_mask(cam, 0.4)[0].sum() == 0
    mask, boxes = box_mask(np.zeros((4, 4), np.float32), 0.4)
    assert mask.sum() == 0 and boxes == []


def test_all_zero_cam_and_one_patch_image_give_zero_maps():
    t = affinity_from_attention(torch.rand(16, 16, generator=torch.Generator().manual_seed(3)) + 0.1)
    cams = np.stack([np.zeros((4, 4), np.float32), np.random.default_rng(0).random((4, 4), np.float32)])
    out = refine_cams(t, cams, (50, 60), 0.4)
    assert out.shape == (2, 50, 60) and out.dtype == np.float32
    assert not out[0].any() and out[1].max() > 0.9
    one = refine_cams(affinity_from_attention(torch.ones(1, 1)), np.full((1, 1, 1), 0.99, np.float32), (10, 12), 0.4)
    assert one.shape == (1, 10, 12) and not one.any()  # the one patch is the last row and column


def test_upsample_maps_is_minmax_then_bilinear():
    maps = np.array([[[1.0, 3.0], [5.0, 9.0]]], np.float32)
    out = upsample_maps(maps, (2, 2))
    np.testing.assert_allclose(out[0], (maps[0] - 1) / (8 + 1e-7), rtol=1e-6)
    assert upsample_maps(maps, (7, 3)).shape == (1, 7, 3)


@pytest.fixture(scope="module")
def golden_vit(golden_clip):
    return DenseViT(golden_clip.model.visual)


def test_mean_attention_matches_reference_sums(golden_vit, golden_debug):
    checked = 0
    for image_id in GOLDEN_IDS:
        ref = golden_debug[image_id]
        image, _ = load_image(GOLDEN / "JPEGImages" / f"{image_id}.jpg")
        attention = golden_vit.mean_attention(to_clip_tensor(image, 16)[None])[0].numpy()
        np.testing.assert_allclose(attention.sum(0), ref["attn_colsum"], atol=1e-5)
        np.testing.assert_allclose(attention.sum(1), ref["attn_rowsum"], atol=1e-5)
        np.testing.assert_allclose(attention[ref["attn_rows_idx"]], ref["attn_rows"], atol=1e-6)
        checked += 1
    assert checked == 12


def test_refined_maps_match_reference_on_every_label(golden_vit, golden_debug):
    labels = 0
    for image_id in GOLDEN_IDS:
        ref = golden_debug[image_id]
        reference = np.load(GOLDEN / "ref_cams" / f"{image_id}.npy", allow_pickle=True).item()  # our own fixture
        image, _ = load_image(GOLDEN / "JPEGImages" / f"{image_id}.jpg")
        attention = golden_vit.mean_attention(to_clip_tensor(image, 16)[None])[0]
        masks = [box_mask(cam, 0.4)[0] for cam in ref["gradcam_patch"]]
        np.testing.assert_array_equal(np.stack(masks), ref["box_mask"])
        out = refine_cams(affinity_from_attention(attention), ref["gradcam_patch"], tuple(ref["ori_hw"]), 0.4)
        diff = np.abs(out - reference["attn_highres"].astype(np.float32)).max(axis=(1, 2))
        assert (diff <= 2e-3).all(), (image_id, diff)
        # the runner's way: T applied twice to the CAMs instead of forming T @ T
        applied = refine_cams(affinity_from_attention(attention, power=1), ref["gradcam_patch"],
                              tuple(ref["ori_hw"]), 0.4, power=2)
        assert np.abs(applied - out).max() <= 1e-5
        diff = np.abs(applied - reference["attn_highres"].astype(np.float32)).max(axis=(1, 2))
        assert (diff <= 2e-3).all(), (image_id, diff)
        labels += len(diff)
    assert labels == 18
