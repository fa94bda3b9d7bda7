"""WeCLIP against the outputs of the original code (``tests/data/weclip-small``, see its MANIFEST).

The folder comes from ``CLIPES_WECLIP_GOLDEN`` (default: the copy under ``tests/data``); a missing
folder fails. The model is built from the golden CLIP and ``decoder_init.pt``; the decoder's
Dropout2d is in eval mode as in the goldens, everything else in train mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.text import encode_prompts_reference
from clipes.data.prompts import DEFAULT_TEMPLATE, class_and_background_lists
from clipes.weclip import rfm, schedule
from clipes.weclip.decoder import WeCLIPDecoder, decoder_config
from clipes.weclip.model import WeCLIP
from clipes.weclip.tower import normalize_image

GOLDEN = Path(os.environ.get("CLIPES_WECLIP_GOLDEN", Path(__file__).parents[1] / "data" / "weclip-small"))
PHASES = {"train_early": False, "train_late": True}


def _max(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _mask_classes(image_id: str) -> list[int]:
    """The reference's image-level labels: values of the full-image GT mask, minus 0 and 255, ascending."""
    values = np.unique(np.asarray(Image.open(GOLDEN / "SegmentationClassAug" / f"{image_id}.png")))
    return [int(v) - 1 for v in values if v not in (0, 255)]


@pytest.fixture(scope="module")
def golden():
    assert GOLDEN.is_dir(), f"WeCLIP golden folder {GOLDEN} is missing (set CLIPES_WECLIP_GOLDEN)"
    assert (GOLDEN / "decoder_init.pt").is_file(), f"{GOLDEN} has no decoder_init.pt"
    clip = load_clip(str(GOLDEN / "clip.pt"))
    # The prompt strings in the golden's own order (a golden set may order the classes otherwise).
    names = np.load(GOLDEN / "text_features.npz")
    fg_prompts, bg_prompts = [str(n) for n in names["fg_names"]], [str(n) for n in names["bg_names"]]
    assert fg_prompts and bg_prompts
    fg = encode_prompts_reference(clip.model, fg_prompts, DEFAULT_TEMPLATE)
    bg = encode_prompts_reference(clip.model, bg_prompts, DEFAULT_TEMPLATE)
    state = torch.load(GOLDEN / "decoder_init.pt", weights_only=True)
    assert state, f"{GOLDEN / 'decoder_init.pt'} holds no tensor"
    return {"clip": clip, "fg": fg, "bg": bg, "state": state}


def _model(golden, grad_method: str = "analytic") -> WeCLIP:
    decoder = WeCLIPDecoder(**decoder_config(golden["state"]))
    decoder.load_state_dict(golden["state"])
    model = WeCLIP(golden["clip"].model.visual, golden["fg"], golden["bg"], golden["clip"].model.logit_scale,
                   decoder, grad_method=grad_method)
    model.train()
    model.decoder.decoder_fts_fuse.dropout.eval()  # the goldens' only deviation from training
    return model


def _batch():
    data = np.load(GOLDEN / "inputs" / "train_batch.npz")
    ids = [str(i) for i in data["ids"]]
    assert ids, "the golden batch lists no images"
    # The reference's crops are float32 after its random rescale: normalise them as float32.
    return ids, normalize_image(data["crops_uint8"].astype(np.float32))


def test_text_features(golden):
    ref = np.load(GOLDEN / "text_features.npz")
    assert tuple(golden["fg"].shape) == ref["fg"].shape and tuple(golden["bg"].shape) == ref["bg"].shape
    assert _max(golden["fg"], ref["fg"]) <= 1e-5
    assert _max(golden["bg"], ref["bg"]) <= 1e-5


def test_the_golden_prompts_are_voc_in_some_order(golden):
    """The golden's class strings are clipes' VOC prompts (possibly permuted) and its background words."""
    names = np.load(GOLDEN / "text_features.npz")
    classes, background = class_and_background_lists("voc12")
    assert sorted(str(n) for n in names["fg_names"]) == sorted(classes.prompts)
    assert sorted(str(n) for n in names["bg_names"]) == sorted(background)


def test_decoder_parameter_count(golden):
    """The decoder built from the golden's sizes has exactly its tensors; spec 8.2's count at ViT-B/16."""
    config = decoder_config(golden["state"])
    decoder = WeCLIPDecoder(**config)
    shapes = {name: tuple(p.shape) for name, p in decoder.named_parameters()}
    assert shapes == {name: tuple(t.shape) for name, t in golden["state"].items()}
    c, e, k, n = config["clip_width"], config["width"], config["num_classes"], config["branches"]
    formula = n * (c * e + e + e * e + e) + (n * e * e + e) + 3 * (12 * e * e + 13 * e) + (k * e + k)  # spec 8.2
    assert sum(p.numel() for p in decoder.parameters()) == formula == sum(t.numel() for t in golden["state"].values())
    assert sum(p.numel() for p in WeCLIPDecoder(768, 11, 256, 21).parameters()) == 5985045


@pytest.mark.parametrize("phase", sorted(PHASES))
def test_training_step(golden, phase):
    late = PHASES[phase]
    ids, images = _batch()
    ref = np.load(GOLDEN / phase / "batch.npz")
    model = _model(golden)
    classes = [_mask_classes(i) for i in ids]
    step = model.step(images, classes, late)

    assert _max(step.fused.detach(), ref["fused_features"]) <= 1e-4
    assert _max(step.logits.detach(), ref["seg_logits"]) <= 1e-4
    assert _max(step.affinity.detach(), ref["decoder_affinity"]) <= 1e-5
    for j, image_id in enumerate(ids):
        per = np.load(GOLDEN / phase / f"{image_id}.npz")
        out = step.images[j]
        assert out.classes == [int(k) for k in per["keys"]]
        assert _max(out.scores, per["clip_scores"]) <= 1e-5
        assert _max(out.cams, per["gradcam"]) <= 1e-4
        if late:
            assert out.attention.selection.tolist() == per["block_select"].tolist()
            assert _max(out.attention.attention / torch.from_numpy(ref["decoder_affinity"][j]).clamp_min(1e-30),
                        per["attn_selected_mean"]) <= 1e-5
        else:
            assert out.attention.selection is None
            assert _max(out.attention.attention, per["attn_mean_last8"]) <= 1e-6
        assert _max(out.refined, per["refined_patch"]) <= 1e-4
        scores = rfm.label_scores(out.refined, images[j], tuple(images.shape[-2:]))
        assert _max(scores, per["par_out"]) <= 1e-4
        assert (out.label.numpy() == per["pseudo_label"]).mean() >= 0.999
    assert (step.labels.numpy() == ref["pseudo_label"]).mean() >= 0.999

    losses = model.losses(step)
    assert np.array_equal(losses.aff_labels.numpy(), ref["aff_label"])
    assert (losses.pos_count, losses.neg_count) == (int(ref["pos_count"]), int(ref["neg_count"]))
    for name, value in (("loss", losses.loss), ("seg_loss", losses.seg), ("attn_loss", losses.aff),
                        ("bg_ce", losses.bg_ce), ("fg_ce", losses.fg_ce)):
        assert abs(float(value.detach()) - float(ref[name])) <= 1e-5 * abs(float(ref[name])), name

    params = dict(model.decoder.named_parameters())
    assert params and set(params) == set(golden["state"])
    optimizer = torch.optim.AdamW(params.values(), lr=schedule.BASE_LR * schedule.LR_MULTIPLIER,
                                  betas=schedule.BETAS, eps=schedule.EPS, weight_decay=schedule.WEIGHT_DECAY)
    lr = schedule.BASE_LR * schedule.LR_MULTIPLIER * schedule.lr_factor(int(ref["global_step_before"]),
                                                                             schedule.ITERS["voc12"])
    assert lr == pytest.approx(float(ref["lr_per_group"][3]), rel=1e-9)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad()
    losses.loss.backward()
    grads = torch.load(GOLDEN / phase / "decoder_grads.pt", weights_only=True)
    after = torch.load(GOLDEN / phase / "decoder_after_step.pt", weights_only=True)
    for name, param in params.items():
        scale = float(grads[name].abs().max())
        assert _max(param.grad, grads[name]) <= 1e-3 * max(scale, 1e-12), name
    optimizer.step()
    for name, param in params.items():
        assert _max(param.detach(), after[name]) <= 1e-6, name


def test_autograd_cams_equal_analytic(golden):
    """The reference's per-class autograd (``--grad autograd``) gives the same CAMs and attention."""
    ids, images = _batch()
    model = _model(golden, "autograd")
    frozen = model.tower(images)
    from clipes.weclip.cam import last_block_cams

    classes = [_mask_classes(i) for i in ids]
    fg = [model.fg_features[c] for c in classes]
    auto = last_block_cams(model.tower.vit, frozen.last_input, frozen.grid, fg, model.bg_features,
                           model.logit_scale, "autograd")
    fast = last_block_cams(model.tower.vit, frozen.last_input, frozen.grid, fg, model.bg_features,
                           model.logit_scale, "analytic")
    for j, image_id in enumerate(ids):
        per = np.load(GOLDEN / "train_early" / f"{image_id}.npz")
        assert _max(auto[j].cams, per["gradcam"]) <= 1e-4
        assert _max(auto[j].cams, fast[j].cams) <= 1e-4
        assert torch.equal(auto[j].last_attention, fast[j].last_attention)


def test_inference(golden):
    model = _model(golden).eval()
    ids = sorted(p.stem for p in (GOLDEN / "infer").glob("*.npz"))
    assert ids, f"{GOLDEN / 'infer'} holds no inference image"
    for image_id in ids:
        ref = np.load(GOLDEN / "infer" / f"{image_id}.npz")
        rgb = np.asarray(Image.open(GOLDEN / "images" / f"{image_id}.png").convert("RGB"))
        image = normalize_image(rgb)  # uint8: normalised in float64 as the reference's test loader
        logits = model.predict_logits(image)
        assert _max(logits, ref["msc_segs"]) <= 1e-4
        h0, w0 = rgb.shape[:2]
        pred = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False).argmax(1)[0]
        assert (pred.numpy() == ref["msc_seg_pred"]).mean() >= 0.999
        # The validation pseudo label: the batch [x, flip x] at long side 512, labels at the original size.
        resized = F.interpolate(image, size=tuple(int(ref["resized_input_hw"][k]) for k in range(2)),
                                mode="bilinear", align_corners=False)
        classes = _mask_classes(image_id)
        with torch.no_grad():
            step = model.step(torch.cat([resized, resized.flip(-1)]), [classes, classes], True,
                              label_sizes=[(h0, w0)] * 2)
        assert _max(step.images[0].cams, ref["gradcam"]) <= 1e-4
        assert _max(step.images[0].refined, ref["refined_patch"]) <= 1e-4
        assert (step.images[0].label.numpy() == ref["cam_label"]).mean() >= 0.999
        assert (step.images[1].label.numpy() == ref["cam_label_flipped_copy"]).mean() >= 0.999
