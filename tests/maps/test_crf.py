"""Dense CRF inputs, quirks and the confidence rule (spec section 6)."""

import cv2
import numpy as np
import pytest
from PIL import Image

from clipes.errors import InputError
from clipes.maps.crf import CrfParams, crf_labels, labels_and_confidence, probability_stack, pseudo_mask, read_crf_image

from conftest import GOLDEN, GOLDEN_IDS


def test_reference_colour_image_wraps_bgr_minus_mean(tmp_path):
    pixels = np.array([[[0, 0, 0], [255, 120, 104]]], np.uint8)  # RGB
    Image.fromarray(pixels).save(tmp_path / "x.png")
    image = read_crf_image(tmp_path / "x.png")
    # BGR minus (104.008, 116.669, 122.675), truncated toward zero, modulo 256.
    assert image[0, 0].tolist() == [152, 140, 134]
    assert image[0, 1].tolist() == [0, 3, 132]  # -0.008 -> 0, 3.331 -> 3, 132.325 -> 132
    assert read_crf_image(tmp_path / "x.png", "rgb")[0, 1].tolist() == [255, 120, 104]


def test_unreadable_image_is_an_input_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(InputError, match="cannot decode"):
        read_crf_image(tmp_path / "bad.jpg")
    with pytest.raises(InputError, match="cannot read"):
        read_crf_image(tmp_path / "missing.jpg")


def test_probability_stack_is_float16_like_the_reference():
    maps = np.array([[[0.3, 0.9]], [[0.6, 0.1]]], np.float32)
    stack = probability_stack(maps)
    assert stack.dtype == np.float16 and stack.shape == (3, 1, 2)
    np.testing.assert_allclose(stack[0].astype(np.float32), [[0.4, 0.1]], atol=1e-3)
    squared = probability_stack(maps, CrfParams(fp16_probs=False, bg_power=2))
    assert squared.dtype == np.float32 and np.allclose(squared[0], [[0.16, 0.01]])


def test_labels_map_through_keys_and_confidence_rule():
    probs = np.array([[[0.9, 0.1, 0.2]], [[0.05, 0.96, 0.3]], [[0.05, 0.0, 0.5]]], np.float32)
    label, confidence = labels_and_confidence(probs, np.array([14, 2]))
    assert label.tolist() == [[0, 15, 3]] and np.allclose(confidence, [[0.9, 0.96, 0.5]])
    assert pseudo_mask(label, confidence, 0.95).tolist() == [[255, 15, 255]]
    assert pseudo_mask(label, confidence, 0.0).tolist() == [[0, 15, 3]]


def _stack_in_numpy(maps, params):
    """The stack formed the plain way, in the stack's dtype (NumPy's float16 loops for fp16)."""
    maps = np.asarray(maps, dtype=np.float16 if params.fp16_probs else np.float32)
    background = np.power(1 - np.max(maps, axis=0, keepdims=True), params.bg_power).astype(maps.dtype)
    return np.concatenate([background, maps], axis=0)


@pytest.mark.parametrize("params", [CrfParams(), CrfParams(fp16_probs=False), CrfParams(bg_power=2),
                                    CrfParams(fp16_probs=False, bg_power=0.5)])
@pytest.mark.parametrize("classes", [1, 3, 21])
def test_fast_stack_labels_and_confidence_equal_the_plain_numpy_forms(params, classes):
    rng = np.random.default_rng(classes)
    maps = rng.random((classes, 37, 50)).astype(np.float32)
    maps[:, :10] = np.round(maps[:, :10] * 4) / 4  # ties between classes: the first row must win
    maps[:, 10:12] *= 1e-6  # float16 subnormals
    stack = probability_stack(maps, params)
    expected = _stack_in_numpy(maps, params)
    assert stack.dtype == expected.dtype and np.array_equal(stack, expected)
    keys = np.arange(classes) * 3 + 1
    label, confidence = labels_and_confidence(stack, keys)
    lookup = np.concatenate([[0], keys + 1])
    assert np.array_equal(label, lookup[np.argmax(stack, axis=0)].astype(np.uint8))
    assert confidence.dtype == np.float32 and np.array_equal(confidence, np.max(stack, axis=0).astype(np.float32))
    assert len(np.unique(label)) > 1


def test_labels_follow_argmax_where_a_map_is_nan():
    probs = np.array([[[0.2, 0.9]], [[np.nan, 0.1]], [[0.5, np.nan]]], np.float32)
    label, confidence = labels_and_confidence(probs, np.array([4, 6]))
    assert label.tolist() == [[5, 7]] and np.isnan(confidence).all()


def test_size_mismatch_is_reported(tmp_path):
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(InputError, match="12x10 but its maps are 12x11"):
        crf_labels(tmp_path / "x.png", np.zeros((1, 11, 12), np.float32), np.array([0]))


def test_crf_on_reference_maps_reproduces_reference_masks():
    agree = total = 0
    for image_id in GOLDEN_IDS:
        reference = np.load(GOLDEN / "ref_cams" / f"{image_id}.npy", allow_pickle=True).item()  # our own fixture
        label, confidence = crf_labels(GOLDEN / "JPEGImages" / f"{image_id}.jpg", reference["attn_highres"],
                                       reference["keys"])
        mask = pseudo_mask(label, confidence, 0.95)
        expected = cv2.imread(str(GOLDEN / "ref_pseudo_masks" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        agree += int((mask == expected).sum())
        total += mask.size
    assert total > 0 and agree / total >= 0.999
