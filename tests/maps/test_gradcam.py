import numpy as np
import pytest
import torch
from PIL import Image

from clipes.backbones.text import encode_prompts
from clipes.backbones.vit import DenseViT
from clipes.data.images import to_clip_tensor
from clipes.data.prompts import DEFAULT_TEMPLATE, builtin_path, load_background_file, load_class_file
from clipes.maps.gradcam import minmax_normalize, softmax_gradcam

from conftest import GOLDEN, make_tiny_clip


@pytest.fixture(scope="module")
def golden_text(golden_clip):
    classes = load_class_file(builtin_path("voc12_classes.tsv"))
    background = load_background_file(builtin_path("voc12_background.txt"))
    model = golden_clip.model
    return (encode_prompts(model, list(classes.prompts), [DEFAULT_TEMPLATE]),
            encode_prompts(model, background, [DEFAULT_TEMPLATE]))


@pytest.mark.parametrize("method", ["analytic", "autograd"])
def test_cams_equal_reference_for_every_label(golden_clip, golden_debug, golden_text, method):
    fg, bg = golden_text
    vit = DenseViT(golden_clip.model.visual)
    worst, labels = 0.0, 0
    for image_id, ref in golden_debug.items():
        image = Image.open(GOLDEN / "JPEGImages" / f"{image_id}.jpg")
        tensor = to_clip_tensor(image, 16)
        assert tuple(tensor.shape[1:]) == tuple(ref["resized_hw"])
        np.testing.assert_allclose(tensor.double().sum(dim=(1, 2)).numpy(), ref["input_sum"], rtol=0, atol=1e-9)
        result = softmax_gradcam(vit, tensor[None], [fg[ref["keys"]]], bg, golden_clip.model.logit_scale,
                                 method=method)[0]
        diff = np.abs(result.cams.numpy() - ref["gradcam_patch"]).max(axis=(1, 2))
        assert (diff <= 1e-3).all(), (image_id, diff)
        np.testing.assert_allclose(result.scores.numpy(), ref["scores"], atol=1e-5)
        np.testing.assert_allclose(result.weights.numpy(), ref["gradcam_weights"],
                                   atol=1e-4 * np.abs(ref["gradcam_weights"]).max())
        worst, labels = max(worst, diff.max()), labels + len(diff)
    assert labels == 18 and worst < 1e-4


def test_analytic_equals_autograd_on_a_batch_of_random_images():
    model = make_tiny_clip(seed=11, width=128, layers=3)
    vit = DenseViT(model.visual)
    torch.manual_seed(0)
    images = torch.randn(3, 3, 48, 80)
    fg = [torch.randn(k, 32) for k in (1, 2, 4)]
    bg = torch.randn(5, 32)
    fast = softmax_gradcam(vit, images, fg, bg, model.logit_scale, method="analytic")
    for i, result in enumerate(fast):
        slow = softmax_gradcam(vit, images[i:i + 1], fg[i:i + 1], bg, model.logit_scale, method="autograd")[0]
        assert result.cams.shape == (len(fg[i]), 3, 5)
        torch.testing.assert_close(result.weights, slow.weights, rtol=1e-4, atol=1e-4 * slow.weights.abs().max().item())
        torch.testing.assert_close(result.cams, slow.cams, rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["analytic", "autograd"])
@pytest.mark.parametrize("patches", [(3, 5), (4, 19)])  # (4, 19): 77 tokens, the last block repeated
def test_cam_pass_attention_equals_mean_attention(method, patches):
    model = make_tiny_clip(seed=13, width=128, layers=3)
    vit = DenseViT(model.visual)
    torch.manual_seed(1)
    images = torch.randn(2, 3, patches[0] * 16, patches[1] * 16)
    fg, bg = [torch.randn(2, 32), torch.randn(1, 32)], torch.randn(3, 32)
    results = softmax_gradcam(vit, images, fg, bg, model.logit_scale, method=method, attention_layers=2)
    expected = vit.mean_attention(images, last=2)
    assert expected.shape == (2, patches[0] * patches[1], patches[0] * patches[1])
    for result, reference in zip(results, expected):
        torch.testing.assert_close(result.attention, reference, rtol=0, atol=1e-6)
    assert softmax_gradcam(vit, images, fg, bg, model.logit_scale)[0].attention is None


def test_77_token_quirk_runs_the_last_block_twice():
    model = make_tiny_clip(seed=12, width=128, layers=2)
    vit = DenseViT(model.visual)
    image = torch.randn(1, 3, 4 * 16, 19 * 16)  # 76 patches + CLS = 77 tokens
    fg, bg = [torch.randn(2, 32)], torch.randn(3, 32)
    quirk = softmax_gradcam(vit, image, fg, bg, model.logit_scale, quirk_77_tokens=True)[0]
    clean = softmax_gradcam(vit, image, fg, bg, model.logit_scale, quirk_77_tokens=False)[0]
    assert not torch.allclose(quirk.scores, clean.scores)
    slow = softmax_gradcam(vit, image, fg, bg, model.logit_scale, quirk_77_tokens=True, method="autograd")[0]
    torch.testing.assert_close(quirk.cams, slow.cams, rtol=0, atol=1e-4)


def test_minmax_normalize_reference_epsilon():
    cam = torch.tensor([[[0.0, 2.0], [1.0, 4.0]]])
    once = minmax_normalize(cam)
    assert once.max().item() == pytest.approx(4.0 / (4.0 + 1e-7))
    zero = minmax_normalize(torch.zeros(1, 2, 2))
    assert torch.equal(zero, torch.zeros(1, 2, 2))
    tiny = torch.tensor([[[0.0, 5.4e-13]]])
    twice = minmax_normalize(minmax_normalize(tiny))
    assert 0.9 < twice.max().item() < 0.99  # the reference's visible shrink for tiny raw maps


def test_single_patch_image_gives_zero_map():
    model = make_tiny_clip(seed=13, width=128, layers=2)
    vit = DenseViT(model.visual)
    result = softmax_gradcam(vit, torch.randn(1, 3, 16, 16), [torch.randn(1, 32)], torch.randn(2, 32),
                             model.logit_scale)[0]
    assert result.cams.shape == (1, 1, 1) and result.cams.item() == 0.0
