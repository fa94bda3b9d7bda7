"""WeCLIP+ against the outputs of the original code (``tests/data/weclipplus-small``, see its MANIFEST).

The folder comes from ``CLIPES_WECLIPPLUS_GOLDEN`` (default: the copy under ``tests/data``); a
missing folder fails. Every size comes from the golden's own files: the CLIP and DINO widths, depths
and heads from ``clip.pt``, ``dino.pt`` (+ ``dino_config.json``), the decoder from ``decoder_init.pt``,
the class order from ``text_features.npz``, the steps' iterations and learning rates from their
``batch.npz``, the images from the folders. The model is built from those files; both Dropout2d
layers are in eval mode as in the goldens, everything else in train mode.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.dinov2 import load_dino
from clipes.backbones.text import encode_prompts_reference
from clipes.data.prompts import DEFAULT_TEMPLATE, class_and_background_lists
from clipes.weclip import rfm, schedule
from clipes.weclip.tower import normalize_image
from clipes.weclip_plus import schedule as plus_schedule
from clipes.weclip_plus.decoder import WeCLIPPlusDecoder, decoder_config
from clipes.weclip_plus.model import WeCLIPPlus
from clipes.weclip_plus.runner import crf_label

from conftest import golden_file

GOLDEN = Path(os.environ.get("CLIPES_WECLIPPLUS_GOLDEN", Path(__file__).parents[1] / "data" / "weclipplus-small"))
PHASES = ("train_early", "train_late")


def _max(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _agree(a, b) -> float:
    return float((np.asarray(a) == np.asarray(b)).mean())


def _load(path: Path) -> dict:
    assert path.is_file(), f"golden file missing: {path} (set CLIPES_WECLIPPLUS_GOLDEN)"
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def golden():
    assert GOLDEN.is_dir(), f"WeCLIP+ golden folder {GOLDEN} is missing (set CLIPES_WECLIPPLUS_GOLDEN)"
    clip = load_clip(str(golden_file(GOLDEN, "clip.pt")))
    dino = load_dino(golden_file(GOLDEN, "dino.pt"))
    names = np.load(GOLDEN / "text_features.npz")
    fg_prompts, bg_prompts = [str(n) for n in names["fg_names"]], [str(n) for n in names["bg_names"]]
    assert fg_prompts and bg_prompts
    voc, _ = class_and_background_lists("voc12")
    by_prompt = dict(zip(voc.prompts, voc.names))
    class_names = [by_prompt[p] for p in fg_prompts]  # the golden's class order
    fg = encode_prompts_reference(clip.model, fg_prompts, DEFAULT_TEMPLATE)
    bg = encode_prompts_reference(clip.model, bg_prompts, DEFAULT_TEMPLATE)
    state = _load(GOLDEN / "decoder_init.pt")
    assert state
    return {"clip": clip, "dino": dino, "fg": fg, "bg": bg, "state": state, "class_names": class_names}


def _xml_classes(golden, image_id: str) -> list[int]:
    """The reference's VOC labels: <object><name> in file order, first occurrence, difficult included."""
    root = ET.parse(GOLDEN / "Annotations" / f"{image_id}.xml").getroot()
    out = []
    for obj in root.iter("object"):
        index = golden["class_names"].index(obj.findtext("name").strip())
        if index not in out:
            out.append(index)
    return out


def _model(golden, state=None) -> WeCLIPPlus:
    state = state or golden["state"]
    decoder = WeCLIPPlusDecoder(**decoder_config(state))
    decoder.load_state_dict(state)
    model = WeCLIPPlus(golden["clip"].model.visual, golden["dino"].model, golden["fg"], golden["bg"],
                       golden["clip"].model.logit_scale, decoder)
    model.train()
    model.decoder.decoder_fts_fuse.dropout.eval()  # the goldens' only deviations from training
    model.decoder.dino_decoder_fts_fuse.dropout.eval()
    return model


def _batch():
    data = np.load(GOLDEN / "inputs" / "train_batch.npz")
    ids = [str(i) for i in data["ids"]]
    assert ids, "the golden batch lists no images"
    return ids, normalize_image(data["crops_uint8"].astype(np.float32))


def test_text_features_and_decoder_size(golden):
    ref = np.load(GOLDEN / "text_features.npz")
    assert tuple(golden["fg"].shape) == ref["fg"].shape and _max(golden["fg"], ref["fg"]) <= 1e-5
    assert tuple(golden["bg"].shape) == ref["bg"].shape and _max(golden["bg"], ref["bg"]) <= 1e-5
    config = decoder_config(golden["state"])
    assert config["clip_width"] == golden["clip"].config["vision_width"]
    assert config["dino_width"] == golden["dino"].config.embed_dim
    decoder = WeCLIPPlusDecoder(**config)
    shapes = {name: tuple(p.shape) for name, p in decoder.named_parameters()}
    assert shapes == {name: tuple(t.shape) for name, t in golden["state"].items()}
    c, d, e, k = config["clip_width"], config["dino_width"], config["width"], config["num_classes"]
    head = lambda i: i * e + e + e * e + e + e * e + e  # noqa: E731  one branch + the 1x1 fuse (spec 8.4)
    total = head(c) + head(d) + config["layers"] * (12 * e * e + 13 * e) + k * e + k
    assert sum(p.numel() for p in decoder.parameters()) == total
    assert sum(p.numel() for p in WeCLIPPlusDecoder(768, 384, 256, 21).parameters()) == 2933269  # spec 8.4


def test_dino_tokens(golden):
    ids, images = _batch()
    ref = np.load(GOLDEN / "train_early" / "batch.npz")
    model = _model(golden)
    tokens, grid = model.dino_tokens(images)
    hw = [int(v) for v in ref["dino_input_hw"]]
    assert [g * golden["dino"].config.patch_size for g in grid] == hw
    assert tuple(tokens.shape) == ref["dino_patch_tokens"].shape
    assert _max(tokens, ref["dino_patch_tokens"]) <= 1e-5


@pytest.mark.parametrize("phase", PHASES)
def test_training_step(golden, phase):
    ids, images = _batch()
    ref = np.load(GOLDEN / phase / "batch.npz")
    state = dict(golden["state"])
    start = GOLDEN / phase / "decoder_start.pt"
    if start.is_file():  # the late step starts from a scaled classifier (see the MANIFEST)
        state.update(_load(start))
    model = _model(golden, state)
    classes = [_xml_classes(golden, i) for i in ids]
    step = model.step(images, classes)
    decoded = step.decoded
    if "clip_fused_features" in ref.files:
        assert _max(decoded.clip_features.detach(), ref["clip_fused_features"]) <= 1e-4
        assert _max(decoded.dino_native.detach(), ref["dino_fused_features_native"]) <= 1e-4
        assert _max(decoded.dino_features.detach(), ref["dino_fused_features"]) <= 1e-4
        assert _max(step.affinity.detach(), ref["decoder_affinity"]) <= 1e-5
    assert _max(decoded.seg_clip.detach(), ref["seg_logits_clip"]) <= 1e-4
    assert _max(decoded.seg_dino.detach(), ref["seg_logits_dino"]) <= 1e-4
    for j, image_id in enumerate(ids):
        per = np.load(GOLDEN / phase / f"{image_id}.npz")
        out = step.images[j]
        assert out.classes == [int(k) for k in per["keys"]]
        assert _max(out.scores, per["clip_scores"]) <= 1e-5
        assert _max(out.cams, per["gradcam"]) <= 1e-4
        assert _max(step.probs[j], per["seg_prob"]) <= 1e-5
        assert _max(out.probs, per["seg_prob_of_keys"]) <= 1e-5
        assert out.attention.selection.tolist() == per["block_select"].tolist()
        assert _max(out.refined, per["refined_patch"]) <= 1e-4
        if "par_out" in per.files:
            scores = rfm.label_scores(out.refined, images[j], tuple(images.shape[-2:]))
            assert _max(scores, per["par_out"]) <= 1e-4
        assert _agree(out.label.numpy(), per["pseudo_label"]) >= 0.999
    assert _agree(step.labels.numpy(), ref["pseudo_label_online"]) >= 0.999

    n_iter = int(ref["n_iter"])
    losses = model.losses(step, override=n_iter > plus_schedule.OVERRIDE_AFTER["voc12"])
    assert np.array_equal(losses.aff_labels.numpy(), ref["aff_label"])
    assert (losses.pos_count, losses.neg_count) == (int(ref["pos_count"]), int(ref["neg_count"]))
    assert np.array_equal(losses.override.numpy(), ref["override_mask"]) or \
        (losses.override.numpy() != ref["override_mask"]).mean() <= 1e-4  # p_max within 1e-6 of 0.75
    assert _agree(losses.train_labels.numpy(), ref["pseudo_label_train"]) >= 0.999
    for got, key in ((losses.pred_clip, "pred_label_clip"), (losses.pred_dino, "pred_label_dino"),
                     (losses.pred_seg, "pred_label_seg")):
        assert _agree(got.numpy(), ref[key]) >= 0.999, key
    for name, value in (("loss", losses.loss), ("seg_loss", losses.seg), ("attn_loss", losses.aff),
                        ("seg_loss2_dice", losses.dice), ("seg_clip_loss2", losses.clip_from_dino),
                        ("seg_dino_loss2", losses.dino_from_clip), ("bg_ce", losses.bg_ce),
                        ("fg_ce", losses.fg_ce)):
        assert abs(float(value.detach()) - float(ref[name])) <= 1e-5 * abs(float(ref[name])), name

    params = dict(model.decoder.named_parameters())
    assert params and set(params) == set(golden["state"])
    lr = plus_schedule.BASE_LR * schedule.LR_MULTIPLIER * schedule.lr_factor(int(ref["global_step_before"]),
                                                                              schedule.ITERS["voc12"])
    assert lr == pytest.approx(float(ref["lr_per_group"][3]), rel=1e-9)
    optimizer = torch.optim.AdamW(params.values(), lr=lr, betas=schedule.BETAS, eps=schedule.EPS,
                                  weight_decay=schedule.WEIGHT_DECAY)
    optimizer.zero_grad()
    losses.loss.backward()
    grads = _load(GOLDEN / phase / "decoder_grads.pt")
    after = _load(GOLDEN / phase / "decoder_after_step.pt")
    before = {name: p.detach().clone() for name, p in params.items()}
    for name, param in params.items():
        assert _max(param.grad, grads[name]) <= 1e-3 * max(float(grads[name].abs().max()), 1e-12), name
    optimizer.step()
    for name, param in params.items():
        assert _max(param.detach(), after[name]) <= 1e-6, name
        assert _max(param.detach() - before[name], after[name] - state[name]) <= 1e-6, name


def test_inference(golden):
    model = _model(golden).eval()
    ids = sorted(p.stem for p in (GOLDEN / "infer").glob("*.npz"))
    assert ids, f"{GOLDEN / 'infer'} holds no inference image"
    for image_id in ids:
        ref = np.load(GOLDEN / "infer" / f"{image_id}.npz")
        rgb = np.asarray(Image.open(GOLDEN / "images" / f"{image_id}.png").convert("RGB"))
        image = normalize_image(rgb)
        h0, w0 = rgb.shape[:2]
        resized = F.interpolate(image, size=tuple(int(v) for v in ref["resized_input_hw"]), mode="bilinear",
                                align_corners=False)
        for scale, key in ((1.0, "scale1"), (1.5, "scale15")):
            xs = resized if scale == 1.0 else F.interpolate(resized, scale_factor=scale, mode="bilinear",
                                                            align_corners=False)
            assert list(xs.shape[-2:]) == ref["resized_input_hw" if scale == 1.0 else "scale15_input_hw"].tolist()
            with torch.no_grad():
                decoded = model.decode(torch.cat([xs, xs.flip(-1)]))[3]
            assert _max(decoded.seg_clip, ref[f"segs_clip_cat_{key}"]) <= 1e-4, key
            assert _max(decoded.seg_dino, ref[f"segs_dino_cat_{key}"]) <= 1e-4, key
        logits = model.predict_logits(image)
        assert _max(logits, ref["msc_segs"]) <= 1e-4
        full = F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)
        assert _agree(full.argmax(1)[0].numpy(), ref["msc_seg_pred"]) >= 0.999
        assert _agree(crf_label(rgb, torch.softmax(full[0], dim=0).numpy()), ref["crf_pred"]) >= 0.999
        # the validation pseudo label of the unflipped copy, at the XML size
        classes = _xml_classes(golden, image_id)
        with torch.no_grad():
            step = model.step(torch.cat([resized, resized.flip(-1)]), [classes, classes], label_sizes=[(h0, w0)] * 2)
        assert _max(step.images[0].cams, ref["gradcam"]) <= 1e-4
        assert _max(step.probs[0], ref["seg_prob_scale1_img0"]) <= 1e-5
        assert _max(step.images[0].refined, ref["refined_patch"]) <= 1e-4
        assert _agree(step.images[0].label.numpy(), ref["cam_label"]) >= 0.999
        assert _agree(step.images[1].label.numpy(), ref["cam_label_flipped_copy"]) >= 0.999
