"""WeakCLIP's parts on their own: label spaces, schedule, drop path, co-attention variants, frozen
CLIP, checkpoint deltas, the slide inference and the loss pieces (independent recomputations)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clipes.weakclip import classes, inference, losses, schedule
from clipes.weakclip.coattention import CoAttention
from clipes.weakclip.encoders import drop_path

from weakclip_helpers import build, model_config

CLIP = Path(__file__).parents[1] / "data" / "weakclip-small" / "clip.pt"


def test_coco_label_spaces_follow_the_spec_table():
    # spec 16: 1..11 -> 1..11, 12..24 -> 13..25, 25..26 -> 27..28, 27..40 -> 31..44, 41..60 -> 46..65,
    # 61 -> 67, 62 -> 70, 63..73 -> 72..82, 74..80 -> 84..90
    table = {}
    for (a, b), start in (((1, 11), 1), ((12, 24), 13), ((25, 26), 27), ((27, 40), 31), ((41, 60), 46),
                          ((61, 61), 67), ((62, 62), 70), ((63, 73), 72), ((74, 80), 84)):
        table.update({k: start + k - a for k in range(a, b + 1)})
    lut = classes.seed_lut("coco91")
    assert len(table) == 80
    assert all(lut[k] == v for k, v in table.items())
    assert lut[0] == 0 and lut[255] == 255
    back = classes.output_lut("coco91", 91)
    assert all(back[v] == k for k, v in table.items())
    assert all(back[i] == 255 for i in classes.COCO_UNUSED)
    assert classes.COCO91[table[12]] == "stop sign" and classes.COCO91[12] == "street sign"
    assert classes.seed_lut("voc") is None and classes.output_lut("coco81", 81) is None
    assert len(classes.COCO81) == 81 and classes.COCO81[12] == "stop sign"


def test_schedule_matches_the_spec_numbers():
    # spec 12: at iteration 8,000 of 20,000 the lr_mult-0 groups have 3.455e-7, the base groups 6.58e-5
    assert schedule.lr_at(8000, 0.0, 20000) == pytest.approx(3.455e-7, rel=1e-3)
    assert schedule.lr_at(8000, 1e-4, 20000) == pytest.approx(6.58e-5, rel=1e-3)
    assert schedule.lr_at(0, 1e-4, 20000) == pytest.approx(1e-4 * 1e-6)
    assert schedule.lr_at(750, 1e-4, 20000) == pytest.approx(
        (1e-6 + 0.5 * (1e-4 - 1e-6) * (1 + math.cos(math.pi * 750 / 20000))) * (1 - 0.5 * (1 - 1e-6)))
    assert schedule.lr_at(8000, 0.0, 20000, leak=False) == 0.0


def test_scheduler_sets_every_group():
    import clipes.mmseg_ext  # noqa: F401
    from clipes.mmseg_ext.weakclip import WeakCLIPCosineLR

    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": 0.0}, {"params": [b], "lr": 1e-4}])
    sched = WeakCLIPCosineLR(opt, max_iters=20000)
    for _ in range(8000):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([3.455e-7, 6.58e-5], rel=1e-3)


def test_drop_path_layouts():
    torch.manual_seed(0)
    x = torch.ones(50, 4, 3)  # [L, B, C]
    token = drop_path(x, 0.5, True, "token")
    sample = drop_path(x, 0.5, True, "sample")
    assert set(token.unique().tolist()) == {0.0, 2.0}
    # token layout: a position is dropped for every sample at once; sample layout: a whole sample
    assert all(len(token[i].unique()) == 1 for i in range(50))
    assert all(len(sample[:, b].unique()) == 1 for b in range(4))
    assert torch.equal(drop_path(x, 0.5, False), x)


def test_coattention_dead_layers_and_chained_option():
    torch.manual_seed(0)
    text, visual = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    ref = CoAttention(16, width=8, heads=2)
    out = ref(text, visual)
    sum(o.sum() for o in out).backward()
    grads = {n: p.grad for n, p in ref.named_parameters()}
    assert grads["decoder.0.self_attn.q_proj.weight"] is None and grads["anti_decoder.1.mlp.0.weight"] is None
    assert grads["decoder.2.self_attn.q_proj.weight"] is not None
    # only the last layer matters: dropping the first two changes nothing
    ref.eval()
    with torch.no_grad():
        base = ref(text, visual)
        for layer in (*ref.decoder[:2], *ref.anti_decoder[:2]):
            for p in layer.parameters():
                p.add_(1.0)
        assert all(torch.equal(a, b) for a, b in zip(base, ref(text, visual)))
    chained = CoAttention(16, width=8, heads=2, chained=True)
    chained.load_state_dict(ref.state_dict())
    chained.eval()
    with torch.no_grad():
        assert not torch.allclose(chained(text, visual)[0], ref(text, visual)[0])


def test_seed_loss_recomputed():
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2, 4, 6, 6, generator=gen), dim=1)
    cues = torch.zeros(2, 4, 6, 6, dtype=torch.uint8)
    cues[0, 0, :2] = 1
    cues[0, 2, 3:] = 1
    cues[1, 3, :, :1] = 1  # no background cue in image 1
    expected = 0.0
    for b in range(2):
        bg, fg = cues[b, 0].sum().item(), cues[b, 1:].sum().item()
        expected -= (torch.log(probs[b, 0])[cues[b, 0] == 1].sum() / max(bg, 1e-4)).item() / 2
        expected -= (torch.log(probs[b, 1:])[cues[b, 1:] == 1].sum() / max(fg, 1e-4)).item() / 2
    assert float(losses.seed_loss(probs, cues)) == pytest.approx(expected, rel=1e-6)


def test_identity_loss_counts_ignored_pixels():
    score = torch.zeros(1, 3, 2, 2)
    score[0, 1] = 1.0
    labels = torch.tensor([[[1, 1], [255, 0]]])
    loss, acc = losses.identity_loss(score, labels, tau=1.0)
    lse = math.log(2 + math.e)
    assert float(loss) == pytest.approx(((lse - 1) * 2 + lse) / 4)  # over 4 pixels, not the 3 valid
    assert float(acc) == pytest.approx(50.0)


def test_slide_windows_cover_and_average():
    calls = []

    def forward(x):
        calls.append(tuple(x.shape[2:]))
        return torch.ones(1, 2, *x.shape[2:])

    image = torch.zeros(1, 3, 700, 520)
    out = inference.slide_logits(forward, image, 2, crop=512, stride=341)
    assert calls == [(512, 512)] * 4  # 2 rows x 2 columns, the last of each pulled back inside the image
    assert torch.allclose(out, torch.ones_like(out))  # overlaps averaged by the window count
    calls.clear()
    inference.slide_logits(forward, torch.zeros(1, 3, 200, 300), 2, crop=512, stride=341)
    assert calls == [(200, 300)]  # smaller than the crop: one window of its own size
    assert inference.view_size(375, 500, (2048, 512), 1.0) == (512, 683)
    assert inference.view_size(375, 500, (2048, 512), 0.5) == (256, 341)


def test_crf_mask_keeps_only_winning_classes():
    rng = np.random.default_rng(0)
    softmax = rng.random((5, 20, 30)).astype(np.float32)
    softmax[3] += 2.0  # class 3 wins everywhere
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    assert set(np.unique(inference.crf_mask(rgb, softmax, inference.VOC_CRF))) == {3}
    softmax[1, :, :10] += 5.0
    keys, prob = inference.keys_and_probs(softmax)
    assert keys.tolist() == [1, 3] and prob.shape == (2, 20, 30)
    assert set(np.unique(inference.crf_mask(rgb, softmax, None))) == {1, 3}


@pytest.fixture(scope="module")
def tiny():
    return build(model_config(CLIP, crop=64, width=8, feature=8, stride=48))


def test_frozen_clip_gets_no_gradient_and_no_saved_tensor(tiny):
    net = build(model_config(CLIP, crop=64, width=8, feature=8, stride=48, frozen_clip=True)).train()
    images = torch.randn(2, 3, 64, 64)
    seeds = torch.zeros(2, 1, 64, 64, dtype=torch.long)
    seeds[:, :, 16:48, 16:48] = 5
    feats = net.features(images)
    logits = net.decode_head(feats["neck_out"])
    parts = losses.weakclip_losses(logits, feats["score"], seeds, images, [123.675, 116.28, 103.53],
                                   [58.395, 57.12, 57.375], (8, 8))
    parts.total.backward()
    params = dict(net.named_parameters())
    assert params["backbone.conv1.weight"].grad is None and params["text_encoder.token_embedding.weight"].grad is None
    assert params["contexts"].grad is not None and params["backbone.fpn1.1.weight"].grad is not None
    state = net.state_dict()
    assert state and not any(k.startswith(("text_encoder.", "clip_delta.")) for k in state)
    assert not any(k.startswith("backbone.") and not k.startswith("backbone.fpn") for k in state)


def test_default_trains_the_clip_at_lr_mult_zero(tiny):
    """The reference's CLIP encoders are parameters of the optimiser (lr_mult 0, the min-lr leak)."""
    from mmengine.optim import build_optim_wrapper

    from clipes.mmseg_ext.runner import load_config
    from clipes.weakclip.options import VOC_CONFIG

    params = dict(tiny.named_parameters())
    names = ("backbone.conv1.weight", "backbone.transformer.resblocks.0.ln_1.weight",
             "text_encoder.token_embedding.weight", "contexts")
    assert all(params[k].requires_grad for k in names)
    wrapper = build_optim_wrapper(tiny, load_config(VOC_CONFIG).optim_wrapper)
    lrs = {id(p): g["lr"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    assert lrs[id(params["backbone.conv1.weight"])] == 0.0 and lrs[id(params["backbone.fpn1.1.weight"])] == 0.0
    assert lrs[id(params["text_encoder.ln_final.weight"])] == 0.0
    assert lrs[id(params["contexts"])] == 1e-4 and lrs[id(params["decode_head.conv_seg.weight"])] == 1e-4
    assert len(lrs) == len(params)


def test_checkpoint_deltas_round_trip(tiny):
    net = build(model_config(CLIP, crop=64, width=8, feature=8, stride=48))
    with torch.no_grad():
        net.backbone.conv1.weight.add_(0.25)
        net.text_encoder.positional_embedding.mul_(2.0)
    state = net.state_dict()
    assert "backbone.conv1.weight" not in state and "text_encoder.positional_embedding" not in state
    delta = state["clip_delta.backbone.conv1.weight"]
    assert torch.allclose(delta, torch.full_like(delta, 0.25), atol=1e-6)
    assert float(state["clip_delta.backbone.ln_pre.weight"].abs().max()) == 0.0
    fresh = build(model_config(CLIP, crop=64, width=8, feature=8, stride=48))
    assert not torch.equal(fresh.backbone.conv1.weight, net.backbone.conv1.weight)
    fresh.load_state_dict(state)
    assert torch.allclose(fresh.backbone.conv1.weight, net.backbone.conv1.weight, atol=1e-6)
    assert torch.allclose(fresh.text_encoder.positional_embedding, net.text_encoder.positional_embedding)
    assert torch.equal(fresh.contexts, net.contexts)
    # a reference checkpoint's own CLIP tensors win over the CLIP file's
    raw = {k: v for k, v in state.items() if not k.startswith("clip_delta.")}
    raw["backbone.conv1.weight"] = torch.full_like(fresh.backbone.conv1.weight, 0.5)
    other = build(model_config(CLIP, crop=64, width=8, feature=8, stride=48))
    other.load_state_dict(raw)
    assert float(other.backbone.conv1.weight.min()) == 0.5


def test_configs_parse_with_the_released_settings():
    from clipes.mmseg_ext.runner import load_config
    from clipes.weakclip.options import COCO_CONFIG, TINY_CONFIG, VOC_CONFIG

    voc, coco, tiny_cfg = (load_config(p) for p in (VOC_CONFIG, COCO_CONFIG, TINY_CONFIG))
    for cfg, space, k in ((voc, "voc", 21), (coco, "coco91", 91)):
        assert cfg.custom_imports["imports"] == ["clipes.mmseg_ext"]
        assert cfg.model.type == "WeakCLIP" and cfg.model.label_space == space
        assert cfg.model.neck.in_channels == [768 + k] * 4 and cfg.model.decode_head.num_classes == k
        assert cfg.model.decode_head.type == "FPNHead" and cfg.model.neck.type == "FPN"
        assert cfg.model.decode_head.norm_cfg.type == "SyncBN" and cfg.model.adapter_norm == "SyncBN"
        assert cfg.model.coattention == dict(width=256, heads=4, layers=3, dropout=0.1, chained=False)
        assert cfg.model.feature_size == (64, 64) and cfg.model.test_cfg == dict(mode="slide", crop_size=512,
                                                                                 stride=341)
        mapping = [t for t in cfg.train_dataloader.dataset.pipeline if t["type"] == "MapSeedLabels"]
        assert mapping and mapping[0]["label_space"] == space
        assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                                                   weight_decay=3e-5)
        assert cfg.optim_wrapper.paramwise_cfg.custom_keys == dict(backbone=dict(lr_mult=0.0),
                                                                   text_encoder=dict(lr_mult=0.0))
        scheduler = cfg.param_scheduler[0]
        assert scheduler.type == "WeakCLIPCosineLR" and scheduler.by_epoch is False and scheduler.min_lr == 1e-6
        assert scheduler.max_iters == cfg.train_cfg.max_iters
    assert (voc.train_cfg.max_iters, voc.train_dataloader.batch_size) == (20000, 8)
    assert (coco.train_cfg.max_iters, coco.train_dataloader.batch_size) == (40000, 6)
    assert voc.masks["crf"] == "voc" and coco.masks["crf"] == "coco" and len(voc.masks["ratios"]) == 6
    model = build(dict(tiny_cfg.model, clip=str(CLIP), class_names=["a", "b"]))
    assert model.num_classes == 3 and model.label_space == "custom" and model.decode_head.num_classes == 3


def test_map_seed_labels_gives_coco_category_ids():
    import clipes.mmseg_ext  # noqa: F401
    from clipes.mmseg_ext.weakclip import MapSeedLabels

    seeds = np.array([[0, 1, 12], [80, 255, 11]], dtype=np.uint8)  # clipes' contiguous COCO labels
    out = MapSeedLabels("coco91").transform({"gt_seg_map": seeds.copy()})["gt_seg_map"]
    assert out.tolist() == [[0, 1, 13], [90, 255, 11]]  # 12 'stop sign' -> id 13, not 'street sign'
    same = MapSeedLabels("none").transform({"gt_seg_map": seeds.copy()})["gt_seg_map"]
    assert np.array_equal(same, seeds)
