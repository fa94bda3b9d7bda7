"""ExCEL against the outputs of the original code (``tests/data/excel-small``, see its MANIFEST).

The folder comes from ``CLIPES_EXCEL_GOLDEN`` (default: the copy under ``tests/data``); a missing
folder fails. Every size comes from the golden's own files: the CLIP's width, depth and heads from
``clip.pt``, the bank from ``attr_bank.npz``, the decoder from ``decoder_init.npz``, the class order
from ``text_features.npz``, the phases' iterations and learning rates from their ``batch.npz``, the
crops from ``inputs/train_batch.npz``, the images from the folders. The fusion head's Dropout2d is in
eval mode as in the goldens; everything else in train mode.
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
from clipes.data.prompts import DEFAULT_TEMPLATE
from clipes.excel import attributes, schedule
from clipes.excel.decoder import decoder_config, excel_decoder
from clipes.excel.model import ExCEL, class_maps, truncated_guide
from clipes.excel.runner import crf_label
from clipes.excel.surgery import lvc_attention
from clipes.maps import caa
from clipes.weclip import rfm
from clipes.weclip import schedule as weclip_schedule
from clipes.weclip.tower import normalize_image

from conftest import golden_file

GOLDEN = Path(os.environ.get("CLIPES_EXCEL_GOLDEN", Path(__file__).parents[1] / "data" / "excel-small"))
PHASES = ("train_early", "train_mid", "train_late")


def _max(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _agree(a, b) -> float:
    a = a.numpy() if isinstance(a, torch.Tensor) else a
    return float((np.asarray(a) == np.asarray(b)).mean())


def _npz(relative: str) -> np.lib.npyio.NpzFile:
    path = GOLDEN / relative
    assert path.is_file(), f"golden file missing: {path} (set CLIPES_EXCEL_GOLDEN)"
    return np.load(path)


def _state(relative: str) -> dict[str, torch.Tensor]:
    data = _npz(relative)
    state = {k: torch.from_numpy(data[k].copy()) for k in data.files}
    assert state, f"{relative} holds no tensor"
    return state


@pytest.fixture(scope="module")
def golden():
    assert GOLDEN.is_dir(), f"ExCEL golden folder {GOLDEN} is missing (set CLIPES_EXCEL_GOLDEN)"
    clip = load_clip(str(golden_file(GOLDEN, "clip.pt")))
    names = _npz("text_features.npz")
    fg, bg = [str(n) for n in names["fg_names"]], [str(n) for n in names["bg_names"]]
    assert fg and bg
    text = encode_prompts_reference(clip.model, fg + bg, DEFAULT_TEMPLATE, False)
    centres, flags = attributes.read_bank(GOLDEN / "attr_bank.npz")
    enriched = attributes.aggregate(text, centres, len(fg))
    state = _state("decoder_init.npz")
    return {"clip": clip, "fg": fg, "bg": bg, "text": text, "centres": centres, "flags": flags,
            "enriched": enriched, "state": state}


def _model(golden, mode: str = "train") -> ExCEL:
    decoder = excel_decoder(**decoder_config(golden["state"]))
    decoder.load_state_dict(golden["state"])
    crop = int(_npz("inputs/train_batch.npz")["crops_uint8"].shape[1])
    model = ExCEL(golden["clip"].model.visual.float(), golden["enriched"], len(golden["fg"]), decoder, mode=mode,
                  crop=crop)
    model.train()
    model.decoder.decoder_fts_fuse.dropout.eval()  # the goldens' only deviation from training
    return model


def _batch():
    data = _npz("inputs/train_batch.npz")
    ids = [str(i) for i in data["ids"]]
    assert ids, "the golden batch lists no images"
    classes = [np.flatnonzero(row).tolist() for row in data["cls_labels"]]
    return ids, normalize_image(data["crops_uint8"].astype(np.float32)), classes, data


def test_text_enrichment(golden):
    ref = _npz("text_features.npz")
    assert _max(golden["text"], ref["integral"]) <= 1e-5
    assert _max(golden["enriched"], ref["text_attr"].T) <= 1e-5
    weights = attributes.attribute_weights(golden["text"], golden["centres"], len(golden["fg"]))
    assert _max(weights, ref["attr_weights"]) <= 1e-5
    clusters = golden["centres"].shape[1]
    assert attributes.masked_count(clusters) == int(ref["topk_masked"][0])
    assert int((weights > 0).sum(1).min()) == clusters - int(ref["topk_masked"][0])


def test_bank_clustering(golden):
    """clipes' clustering of the golden's descriptor embeddings gives the reference's bank (same
    scikit-learn, KMeans(K_a, random_state=0)): centres and the (unused) class flags."""
    bank = _npz("attr_bank.npz")
    embeddings, owners = torch.from_numpy(bank["descriptor_embeddings"]), bank["descriptor_class"].tolist()
    assert len(owners) > 0
    centres, flags = attributes.build_bank(embeddings, owners, bank["flags"].shape[0], bank["centers"].shape[1])
    assert _max(centres, bank["centers"]) <= 1e-5
    assert np.array_equal(flags.numpy(), bank["flags"])


def test_surgery_forward(golden):
    ids, images, _, _ = _batch()
    ref = _npz("forward/batch.npz")
    model = _model(golden)
    surgery = model.clip(images)
    assert surgery.features.shape[0] == ref["decoder_inputs_img0"].shape[0]
    maps = surgery.patch_maps()
    assert _max(maps[:, 0], ref["decoder_inputs_img0"]) <= 1e-4
    assert _max(maps.double().sum(dim=(2, 3, 4)), ref["decoder_inputs_sum"]) <= 1e-4 * np.abs(
        ref["decoder_inputs_abssum"]).max()
    assert _max(surgery.image_features[0], ref["image_features_img0"]) <= 1e-5
    attn = surgery.attention.double()
    assert _max(attn.sum(dim=(2, 3)), ref["attn_block_sums"]) <= 1e-3
    assert _max(attn[:, :, 1:, 1:].sum(dim=(2, 3)), ref["attn_block_patch_sums"]) <= 1e-3
    assert _max(attn[:, :, 1:, 0].sum(dim=2), ref["attn_block_cls_mass"]) <= 1e-4
    table = model.clip.table.double()
    assert abs(float(table.sum()) - float(ref["pos_table_sum"][0])) <= 1e-6 * float(table.abs().sum())
    fused, logits, affinity = model.decode(surgery)
    assert _max(fused, ref["fused_features"]) <= 1e-4
    assert _max(logits, ref["seg_logits"]) <= 1e-4
    assert _max(affinity, ref["decoder_affinity"]) <= 1e-5
    assert _max(model.cams(surgery), ref["attr_static"]) <= 1e-4

    dynamic = _npz("forward/dynamic.npz")
    lvc = lvc_attention(fused.detach(), model.clip.heads)
    assert _max(lvc[0, 0], dynamic["ex_attn_img0"]) <= 1e-5
    full = model.clip(images, lvc)  # the reference's whole second forward
    assert _max(full.image_features[0], dynamic["image_features_dynamic_img0"]) <= 1e-5
    assert _max(model.cams(full), dynamic["attr_dynamic"]) <= 1e-4
    quick = model.clip.calibrated(surgery, lvc[:, 0])  # clipes' incremental pass (the default)
    assert _max(quick[0], dynamic["image_features_dynamic_img0"]) <= 1e-5
    assert _max(model.dynamic_cams(images, fused, surgery), dynamic["attr_dynamic"]) <= 1e-4


def test_guide():
    _, images, _, data = _batch()
    guide = truncated_guide(images)
    assert np.array_equal(np.round(guide.numpy() * 255).astype(np.uint8), data["denorm_uint8"])


@pytest.mark.parametrize("phase", PHASES)
def test_training_step(golden, phase):
    ids, images, classes, _ = _batch()
    ref = _npz(f"{phase}/batch.npz")
    n_iter = int(ref["n_iter"][0])
    iters = schedule.ITERS["voc12"]
    dynamic = n_iter >= schedule.dynamic_from("voc12", iters)
    late = n_iter >= schedule.self_affinity_from("voc12", iters)
    model = _model(golden)
    step = model.step(images, classes, dynamic)
    threshold = model.box_threshold
    checked = 0
    for j, image_id in enumerate(ids):
        path = GOLDEN / phase / f"{image_id}.npz"
        if not path.is_file():
            continue  # the late phase repeats the mid phase's labels (MANIFEST)
        per = np.load(path)
        out = step.images[j]
        assert out.classes == [int(k) for k in per["keys"]]
        boxes = np.stack([caa.box_mask(c, threshold)[0] for c in out.cams.numpy()])
        assert np.array_equal(boxes.astype(np.uint8), per["box_mask"])
        if dynamic:
            assert out.attention.selection.tolist() == per["block_select"].tolist()
        if "attn_agg" in per.files:
            assert _max(out.attention.attention, per["attn_agg"]) <= 1e-5
            trans = caa.affinity_from_attention(out.attention.attention.float(), rounds=3, power=2)
            assert _max(trans, per["trans_mat"]) <= 1e-5
        assert _max(out.refined, per["refined_patch"]) <= 1e-4
        if "refined_cam" in per.files:
            stack = rfm.label_maps(out.refined, tuple(images.shape[-2:]))
            assert _max(stack[1:], per["refined_cam"]) <= 1e-4
        if "par_out" in per.files:
            scores = rfm.label_scores(out.refined, truncated_guide(images)[j], tuple(images.shape[-2:]))
            assert _max(scores, per["par_out"]) <= 1e-4
        assert _agree(out.label, per["pseudo_label"]) >= 0.999
        checked += 1
    assert checked or phase == "train_late"
    assert _agree(step.labels, ref["pseudo_label"]) >= 0.999

    losses = model.losses(step, self_affinity=late)
    assert _agree(losses.seg_pred, ref["seg_pred"]) >= 0.999
    assert np.array_equal(losses.aff_labels.numpy(), ref["aff_label"])
    assert (losses.pos_count, losses.neg_count) == (int(ref["pos_count"][0]), int(ref["neg_count"][0]))
    for name, value in (("loss", losses.loss), ("seg_loss", losses.seg), ("diver_loss", losses.aff),
                        ("bg_ce", losses.bg_ce), ("fg_ce", losses.fg_ce)):
        assert abs(float(value.detach()) - float(ref[name][0])) <= 1e-5 * abs(float(ref[name][0])), name

    params = dict(model.decoder.named_parameters())
    assert params and set(params) == set(golden["state"])
    lr = schedule.LR * weclip_schedule.lr_factor(int(ref["global_step_before"][0]), iters,
                                                 schedule.WARMUP_ITERS["voc12"])
    assert lr == pytest.approx(float(ref["lr_per_group"][3]), rel=1e-9)
    optimizer = torch.optim.AdamW(params.values(), lr=lr, betas=weclip_schedule.BETAS, eps=weclip_schedule.EPS,
                                  weight_decay=weclip_schedule.WEIGHT_DECAY)
    optimizer.zero_grad()
    losses.loss.backward()
    grads = _state(f"{phase}/decoder_grads.npz")
    after = _state(f"{phase}/decoder_after_step.npz")
    before = {name: p.detach().clone() for name, p in params.items()}
    for name, param in params.items():
        assert _max(param.grad, grads[name]) <= 1e-3 * max(float(grads[name].abs().max()), 1e-12), name
    optimizer.step()
    for name, param in params.items():
        assert _max(param.detach(), after[name]) <= 1e-6, name
        assert _max(param.detach() - before[name], after[name] - golden["state"][name]) <= 1e-6, name


def _mask_classes(image_id: str) -> list[int]:
    mask = np.asarray(Image.open(GOLDEN / "SegmentationClassAug" / f"{image_id}.png"))
    return [int(v) - 1 for v in np.unique(mask) if 0 < v < 255]


def test_inference(golden):
    model = _model(golden, mode="val").eval()
    ids = sorted(p.stem for p in (GOLDEN / "infer").glob("*.npz"))
    assert ids, f"{GOLDEN / 'infer'} holds no inference image"
    for image_id in ids:
        ref = np.load(GOLDEN / "infer" / f"{image_id}.npz")
        rgb = np.asarray(Image.open(GOLDEN / "images" / f"{image_id}.png").convert("RGB"))
        image = normalize_image(rgb)
        h, w = rgb.shape[:2]
        sizes = [int(s) for s in ref["scale_sizes"]]
        base = sizes[0]
        for side in sizes:
            x = F.interpolate(image, size=[side, side], mode="bilinear", align_corners=False)
            segs = model.segment(torch.cat([x, x.flip(-1)]))
            assert _max(segs, ref[f"segs_cat_s{round(100 * side / base):03d}"]) <= 1e-4, side
        scales = tuple(round(s / base, 4) for s in sorted(sizes))
        logits = model.predict_logits(image, base, scales)
        assert tuple(logits.shape[-2:]) == (h, w)
        assert _max(logits[..., ::4, ::4], ref["msc_segs_sub4"]) <= 1e-4
        assert _agree(logits.argmax(1)[0], ref["seg_pred"]) >= 0.999
        assert _agree(crf_label(rgb, torch.softmax(logits[0], dim=0).numpy()), ref["crf_pred"]) >= 0.999

        classes = _mask_classes(image_id)
        assert classes == [int(k) for k in ref["tf_keys"]]
        cams, scores, out = model.training_free(image, classes, (h, w), base)
        assert _max(cams, ref["tf_attr_static"]) <= 1e-4
        assert _max(out.refined, ref["tf_refined_patch"]) <= 1e-4
        maps = rfm.label_maps(out.refined, (h, w))
        assert abs(float(maps.double().sum()) - float(ref["tf_normed_cams_sum"][0])) <= 1e-5 * float(maps.sum())
        assert _agree(out.label, ref["tf_pseudo_label"]) >= 0.999
        assert class_maps(cams, classes, (base // 16, base // 16)).shape[0] == len(classes)


def test_augmentation_reproduces_the_crops():
    """The reference's seeded augmentation (``random`` and NumPy seeded with the run's seed, images in
    batch order) gives the golden crops and mask crops exactly, the mask-steered window included."""
    import json
    import random

    from clipes.excel.data import augment

    data = _npz("inputs/train_batch.npz")
    info = GOLDEN / "ref_logs" / "run_info.json"
    assert info.is_file(), f"golden file missing: {info}"
    seed = int(json.loads(info.read_text())["args"]["seed"])
    crop = int(data["crops_uint8"].shape[1])
    random.seed(seed)
    np.random.seed(seed)
    ids = [str(i) for i in data["ids"]]
    assert ids
    for j, image_id in enumerate(ids):
        rgb = np.asarray(Image.open(GOLDEN / "images" / f"{image_id}.png").convert("RGB"))
        mask = np.asarray(Image.open(GOLDEN / "SegmentationClassAug" / f"{image_id}.png"))
        image, window = augment(rgb, mask, crop)
        assert np.array_equal(image.astype(np.uint8), data["crops_uint8"][j]), image_id
        assert np.array_equal(window.astype(np.uint8), data["gt_crops"][j]), image_id
