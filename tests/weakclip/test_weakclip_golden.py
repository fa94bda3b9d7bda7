"""WeakCLIP against the outputs of the original code (``tests/data/weakclip-small``, see its MANIFEST).

The folder comes from ``CLIPES_WEAKCLIP_GOLDEN`` (default: the copy under ``tests/data``); a missing
folder fails. The model is the golden's: its CLIP, and the crop, widths and feature size read off its
own files (``trainable_weights.pt``, ``inputs.npz``, ``loss_eval.npz``), with the released config's
slide window and test scale scaled to that crop as the MANIFEST describes; image ids come from the
golden's files too.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from weakclip_helpers import build, model_config

GOLDEN = Path(os.environ.get("CLIPES_WEAKCLIP_GOLDEN", Path(__file__).parents[1] / "data" / "weakclip-small"))
GRADS = ("contexts", "gamma", "beta", "decode_head.conv_seg.weight", "decode_head.conv_seg.bias",
         "context_decoder.out_proj.1.weight", "context_decoder.anti_out_proj.1.weight",
         "neck.lateral_convs.0.conv.weight", "backbone.fpn1.1.weight", "text_encoder.positional_embedding")


def _max(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _npz(name: str):
    path = GOLDEN / name
    assert path.is_file(), f"golden file missing: {path} (set CLIPES_WEAKCLIP_GOLDEN)"
    return np.load(path)


def _golden_sizes(state: dict) -> dict:
    """The golden model's sizes, from its files: crop, co-attention / FPN width, feature size, slide stride."""
    crop = int(_npz("inputs.npz")["train_img_normalized"].shape[-1])
    return dict(crop=crop, width=int(state["context_decoder.memory_proj.1.weight"].shape[0]),
                feature=int(_npz("loss_eval.npz")["seg_logits_feature_size"].shape[-1]),
                stride=round(crop * 341 / 512))  # the released 512 / 341 slide window scaled to the crop


def _ids(name: str, suffix: str) -> list[str]:
    ids = sorted(k[:-len(suffix)] for k in _npz(name).files if k.endswith(suffix))
    assert ids, f"{name} names no image (no *{suffix} entry)"
    return ids


@pytest.fixture(scope="module")
def model():
    assert GOLDEN.is_dir(), f"WeakCLIP golden folder not found: {GOLDEN} (set CLIPES_WEAKCLIP_GOLDEN)"
    state = torch.load(GOLDEN / "trainable_weights.pt", weights_only=True)
    assert state, "trainable_weights.pt holds no tensor"
    sizes = _golden_sizes(state)
    net = build(model_config(GOLDEN / "clip.pt", **sizes))
    net.golden_sizes = sizes
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected
    assert all(k.startswith(("backbone.", "text_encoder.")) and not k.startswith("backbone.fpn") for k in missing)
    return net.eval()


@pytest.fixture(scope="module")
def inputs():
    return _npz("inputs.npz")


def test_text_side(model):
    text = _npz("text.npz")
    assert np.array_equal(model.tokens.numpy(), text["voc_token_ids"])
    assert np.array_equal((model.tokens.argmax(-1) + 8).numpy(), text["voc_eot_index_in_prompt"])
    from clipes.weakclip.classes import COCO91
    from clipes.weakclip.encoders import tokenize_names

    assert np.array_equal(tokenize_names(COCO91).numpy(), text["coco_token_ids"])
    assert _max(model.text_encoder.positional_embedding.detach(), text["text_positional_embedding_truncated"]) == 0
    assert _max(model.backbone.positional_embedding.detach(), text["backbone_positional_embedding_resized"]) < 1e-6
    with torch.no_grad():
        t0 = model.text_embeddings()
    assert tuple(t0.shape) == text["text_encoder_out"].shape
    assert _max(t0, text["text_encoder_out"]) <= 1e-5


@pytest.fixture(scope="module")
def eval_features(model, inputs):
    with torch.no_grad():
        return model.features(torch.from_numpy(inputs["train_img_normalized"]))


def _level(ref, name: str) -> np.ndarray:
    """A tap the golden stores whole (``name``) or as a channel slice ``name_ch0toN``."""
    sliced = [k for k in ref.files if k.startswith(f"{name}_ch0to")]
    return ref[sliced[0]] if sliced else ref[name]


def _compare_levels(got, ref, name: str, count: int, tol: float) -> None:
    for i in range(count):
        expected = _level(ref, f"{name}_{i}")
        if f"{name}_{i}_shape" in ref.files:
            assert tuple(got[i].shape) == tuple(ref[f"{name}_{i}_shape"]), (name, i)
        assert _max(got[i][:, :expected.shape[1]], expected) <= tol, (name, i)


def test_image_side_and_adapter(eval_features):
    ref = _npz("forward_eval.npz")
    taps = sorted(k for k in ref.files if k.startswith("block_out_"))
    assert taps and len(taps) == len(eval_features["taps"])
    for i, key in enumerate(taps):
        assert _max(eval_features["taps"][i], ref[key]) <= 1e-4, i
    got = eval_features["adapted"]
    _compare_levels(got, ref, "adapter_out", len(got), 1e-4)
    assert _max(eval_features["global_embedding"], ref["global_embedding"]) <= 1e-4
    assert _max(eval_features["visual"], ref["visual_embedding"]) <= 1e-4


def test_coattention_and_score_map(eval_features):
    ref = _npz("forward_eval.npz")
    assert _max(eval_features["context"], ref["visual_context"]) <= 1e-5
    assert _max(eval_features["text_diff"], ref["text_diff"]) <= 1e-5
    assert _max(eval_features["visual_diff"], ref["visual_diff"]) <= 1e-5
    assert _max(eval_features["text_updated"], ref["text_embeddings_updated"]) <= 1e-5
    assert _max(eval_features["score"], ref["score_map"]) <= 1e-5
    assert eval_features["neck_in"]
    for i, level in enumerate(eval_features["neck_in"]):
        assert tuple(level.shape) == tuple(ref[f"decoder_in_{i}_shape"])


def test_decoder_eval(model, eval_features, inputs):
    ref = _npz("forward_eval.npz")
    neck = eval_features["neck_out"]
    assert neck
    _compare_levels(neck, ref, "neck_out", len(neck), 1e-4)
    with torch.no_grad():
        logits = model.decode_head(neck)
        full = model.encode_decode(torch.from_numpy(inputs["train_img_normalized"]))
    assert _max(logits, ref["logits_quarter"]) <= 1e-4
    agree = (full.argmax(1).numpy() == ref["logits_full_argmax"]).mean()
    assert agree >= 0.999


def _trainbn(model):
    """model.train() with dropout and drop path off: BN on batch statistics (a copy: buffers change)."""
    net = copy.deepcopy(model).train()
    net.backbone.drop_rates = [0.0] * len(net.backbone.drop_rates)
    for module in net.modules():
        if isinstance(module, (torch.nn.Dropout, torch.nn.Dropout2d)):
            module.eval()
    return net


def test_decoder_trainbn(model, inputs):
    ref = _npz("forward_trainbn.npz")
    net = _trainbn(model)
    with torch.no_grad():
        feats = net.features(torch.from_numpy(inputs["train_img_normalized"]))
        logits = net.decode_head(feats["neck_out"])
    assert _max(feats["score"], ref["score_map"]) <= 1e-5
    _compare_levels(feats["neck_out"], ref, "neck_out", len(feats["neck_out"]), 1e-4)
    assert _max(logits, ref["logits_quarter"]) <= 1e-4


def _step(net, inputs):
    from clipes.weakclip import losses

    images = torch.from_numpy(inputs["train_img_normalized"])
    seeds = torch.from_numpy(inputs["train_gt_semantic_seg"])
    net.zero_grad()
    feats = net.features(images)
    logits = net.decode_head(feats["neck_out"])
    mean, std = inputs["img_norm_mean"].tolist(), inputs["img_norm_std"].tolist()
    size = (net.golden_sizes["feature"],) * 2
    probs = losses.probabilities(logits, size)
    nearest, cues = losses.seed_cues(seeds, size, int(logits.shape[1]))
    target, rgb, raw = losses.crf_target(images, probs, mean, std)
    parts = losses.weakclip_losses(logits, feats["score"], seeds, images, mean, std, size)
    parts.total.backward()
    return dict(logits=logits, probs=probs, nearest=nearest, cues=cues, target=target, rgb=rgb, raw=raw, parts=parts)


@pytest.mark.parametrize("mode", ["eval", "trainbn"])
def test_losses_and_gradients(model, inputs, mode):
    ref = _npz(f"loss_{mode}.npz")
    net = copy.deepcopy(model).eval() if mode == "eval" else _trainbn(model)
    out = _step(net, inputs)
    import torch.nn.functional as F

    seg = F.interpolate(out["logits"], size=ref["seg_logits_feature_size"].shape[-2:], mode="bilinear",
                        align_corners=False)
    assert _max(seg.detach(), ref["seg_logits_feature_size"]) <= 1e-4
    assert _max(out["probs"].detach(), ref["probs"]) <= 1e-5
    assert np.array_equal(out["nearest"].numpy(), ref["gt_nearest_feature_size"])
    assert np.array_equal(out["cues"].numpy(), ref["cues"])
    rgb_equal = np.array_equal(out["rgb"], ref["crf_rgb_uint8"])
    assert rgb_equal, "the CRF image differs from the reference's"
    assert _max(out["raw"], ref["crf_Q_raw"]) <= 1e-4
    assert _max(out["target"], np.exp(ref["crf_log_target"])) <= 1e-4
    parts = out["parts"]
    for got, key in ((parts.seed, "loss.decode.loss_seeding"), (parts.boundary, "loss.decode.loss_boundary"),
                     (parts.identity, "loss.aux_identity.loss_ce"), (parts.total, "loss.total")):
        expected = float(ref[key])
        assert abs(float(got) - expected) <= 1e-5 * abs(expected), (key, float(got), expected)
    assert abs(float(parts.accuracy) - float(ref["loss.aux_identity.acc_seg"][0])) <= 1e-3
    params = dict(net.named_parameters())
    for name in GRADS:
        grad = params[name].grad
        assert grad is not None, name
        expected = ref[f"grad.{name}"]
        assert _max(grad, expected) <= 1e-3 * np.abs(expected).max(), name
    dead = [n for n, p in params.items() if n.startswith(("context_decoder.decoder.0", "context_decoder.decoder.1",
                                                           "context_decoder.anti_decoder.0",
                                                           "context_decoder.anti_decoder.1"))]
    assert dead and all(params[n].grad is None for n in dead)


@pytest.mark.parametrize("image_id", _ids("inference.npz", "_keys") if (GOLDEN / "inference.npz").is_file()
                         else ["(golden inference.npz missing)"])
def test_inference_views_average_and_crf(model, inputs, image_id):
    from clipes.maps.crf import read_crf_image
    from clipes.weakclip import inference

    ref = _npz("inference.npz")
    masks = _npz("pseudo_masks.npz")
    path = GOLDEN / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{image_id}.jpg"
    bgr = read_crf_image(path, "rgb")[:, :, ::-1]
    assert np.array_equal(bgr[:, :, ::-1], inputs[f"{image_id}_rgb_cv2"])
    crop, stride, classes = model.golden_sizes["crop"], model.golden_sizes["stride"], model.num_classes
    scale = (4 * crop, crop)  # the released (2048, 512) scaled to the crop (MANIFEST)
    views = list(inference.views(bgr, scale))
    assert views and len(views) == len(ref[f"{image_id}_aug_flip"])
    assert [list(v.shape[2:]) for v, _ in views] == ref[f"{image_id}_aug_input_hw"].tolist()
    assert [f for _, f in views] == ref[f"{image_id}_aug_flip"].tolist()
    size = bgr.shape[:2]
    with torch.no_grad():
        per_view = [inference.view_softmax(model.encode_decode, v, f, size, classes, crop, stride)[0]
                    for v, f in views]
    argmax = np.stack([p.argmax(0).numpy() for p in per_view])
    assert (argmax == ref[f"{image_id}_aug_argmax"]).mean() >= 0.999
    for key in ref.files:  # the views whose whole softmax the golden stores
        if key.startswith(f"{image_id}_aug") and key.endswith("_softmax"):
            view = int(key[len(f"{image_id}_aug"):-len("_softmax")])
            assert _max(per_view[view], ref[key]) <= 1e-4, key
    with torch.no_grad():
        mean = inference.average_softmax(model.encode_decode, bgr, classes, crop, stride, scale).numpy()
    assert _max(sum(per_view) / len(per_view), mean) <= 1e-6
    keys, prob = inference.keys_and_probs(mean)
    assert keys.size > 0
    assert np.array_equal(keys, ref[f"{image_id}_keys"])
    assert _max(prob, ref[f"{image_id}_prob"]) <= 1e-4
    assert (mean.argmax(0) == ref[f"{image_id}_pred"][0]).mean() >= 0.999
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(rgb, inputs[f"{image_id}_rgb_pil"])
    mask = inference.crf_mask(rgb, mean, inference.VOC_CRF)
    assert (mask == masks[f"{image_id}_crf"]).mean() >= 0.999
