"""`clipes train-weakclip / masks-weakclip` end to end (golden images, golden 12-block CLIP, a tiny
64-pixel config), reference checkpoints, and the answers to bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipes.store import manifest, maskstore
from clipes.weakclip.options import TINY_CONFIG, VOC_CONFIG

from conftest import GOLDEN, make_tiny_clip, save_state_dict
from helpers import assert_same_checkpoint, clipes, copy_golden

CLIP = GOLDEN / "clip.pt"
IDS = GOLDEN.joinpath("split.txt").read_text().split()
WEAK = Path(__file__).parents[1] / "data" / "weakclip-small"
SHA = "b7b8966159214189ac62878ea465b781a9e68e07a86847da484864ea84454aaf"


def small_config(folder: Path) -> Path:
    """The tiny config at 64 pixels, width 8, one view: seconds per run on CPU."""
    path = folder / "weakclip_test_64.py"
    path.write_text(f"""_base_ = ['{TINY_CONFIG}']
crop_size = (64, 64)
model = dict(input_resolution=64, feature_size=(8, 8), coattention=dict(width=8), neck=dict(out_channels=8),
             decode_head=dict(in_channels=[8, 8, 8, 8], channels=8), test_cfg=dict(crop_size=64, stride=43),
             data_preprocessor=dict(size=crop_size))
train_pipeline = [
    dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=(256, 64), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75), dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'), dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
masks = dict(img_scale=(256, 64), ratios=(1.0,), flip=True, crf='voc')
default_hooks = dict(checkpoint=dict(interval=2))
""")
    return path


def write_clipes_masks(work: Path, data: Path, ids: list[str]) -> Path:
    """WORK/masks as clipes' refine leaves it: the golden GT with a 255 band, and a manifest."""
    from clipes.data.prompts import default_class_file, load_class_file

    folder = work / maskstore.MASKS_STAGE
    names = list(load_class_file(default_class_file("voc12")).names)
    header = {"classes": names, "input": {"dataset": "voc12", "data_root": str(data),
                                          "images": str(data / "JPEGImages")}, "format": maskstore.MASKS_FORMAT}
    manifest.begin_run(folder, maskstore.MASKS_STAGE, header, manifest.identity_of({"test": 1}))
    for image_id in ids:
        gt = np.asarray(Image.open(GOLDEN / "SegmentationClassAug" / f"{image_id}.png")).copy()
        gt[:, :3] = 255
        maskstore.write_mask(maskstore.png_path(folder, image_id), gt)
    manifest.end_run(folder, {}, set(ids), {}, {}, len(ids))
    return folder


def train_args(work, config, *extra, iters=4, clip=CLIP):
    return ["train-weakclip", "--work", work, "--config", config, "--clip", clip, "--iters", iters, "--jobs", 0,
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("weakclip")
    data = root / "data"
    split = copy_golden(data, IDS[:6])
    work = root / "work"
    write_clipes_masks(work, data, IDS[:6])
    config = small_config(root)
    result = clipes(*train_args(work, config))
    assert result.returncode == 0, result.stdout + result.stderr
    return data, split, work, config, result


def test_train_writes_checkpoints_without_the_clip(trained):
    data, split, work, config, result = trained
    out = work / "weakclip"
    assert "train-weakclip: 6 seed masks (clipes labels), custom label space with 21 classes, 4 iterations" \
        in result.stdout
    assert sorted(p.name for p in out.glob("iter_*.pth")) == ["iter_2.pth", "iter_4.pth"]
    ckpt = torch.load(out / "iter_4.pth", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    assert state and "contexts" in state and "decode_head.conv_seg.weight" in state
    clip_keys = [k for k in state if (k.startswith("backbone.") and not k.startswith("backbone.fpn"))
                 or k.startswith("text_encoder.")]
    assert clip_keys == []  # the CLIP is never saved, only its change
    assert any(k.startswith("clip_delta.backbone.transformer.") for k in state)
    trained_bytes = sum(v.numel() * v.element_size() for k, v in state.items() if not k.startswith("clip_delta."))
    assert trained_bytes < 1_000_000
    meta = ckpt["meta"]["weakclip"]
    assert meta["clip_sha256"] == SHA and meta["label_space"] == "custom" and len(meta["classes"]) == 21
    assert meta["seed_labels"] == "clipes" and meta["frozen_clip"] is False
    init = torch.load(out / "iter_2.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(init["decode_head.conv_seg.weight"], state["decode_head.conv_seg.weight"])
    run = json.loads((out / "manifest.json").read_text())
    assert run["stage"] == "weakclip" and run["training"]["iters"] == 4 and run["method"] == "weakclip"


def test_train_resumes_after_a_kill(trained, tmp_path):
    data, split, work, config, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    out = copy / "weakclip"
    (out / "iter_4.pth").unlink()
    (out / "last_checkpoint").write_text(str(out / "iter_2.pth"))
    result = clipes(*train_args(copy, config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from {out / 'iter_2.pth'}" in result.stdout
    assert torch.load(out / "iter_4.pth", weights_only=True)["meta"]["iter"] == 4
    # data order, augmentation and dropout as in the uninterrupted run: the same checkpoint, bit for bit
    assert_same_checkpoint(work / "weakclip" / "iter_4.pth", out / "iter_4.pth")


def test_masks_feed_eval_and_resume(trained, tmp_path):
    data, split, work, config, _ = trained
    ckpt = work / "weakclip" / "iter_4.pth"
    res = clipes("masks-weakclip", "--checkpoint", ckpt, "--work", work, "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    folder = work / "methods" / "weakclip" / "masks"
    assert "masks-weakclip: 6 done, 0 already done, 0 failed" in res.stdout
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 6
    for image_id in IDS[:6]:
        mask = np.asarray(Image.open(folder / f"{image_id}.png"))
        with Image.open(data / "JPEGImages" / f"{image_id}.jpg") as image:
            assert mask.shape == (image.height, image.width)
        assert mask.max() <= 20
    info = json.loads((folder / "manifest.json").read_text())
    assert info["method"] == "weakclip" and info["options"]["ratios"] == [1.0] and info["options"]["crf"] == "voc"
    assert info["classes"][0] == "aeroplane" and len(info["classes"]) == 20
    # the seeds are untouched, a rerun is done already, other options need another folder
    assert len(list((work / "masks").glob("*.png"))) == 6
    res = clipes("masks-weakclip", "--checkpoint", ckpt, "--work", work, "--no-progress")
    assert "0 done, 6 already done" in res.stdout
    res = clipes("masks-weakclip", "--checkpoint", ckpt, "--work", work, "--no-crf", "--no-progress")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    res = clipes("masks-weakclip", "--checkpoint", ckpt, "--work", work, "--no-crf", "--out", tmp_path / "nocrf",
                 "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    gt = tmp_path / "gt"
    gt.mkdir()
    for image_id in IDS[:6]:
        shutil.copy(GOLDEN / "SegmentationClassAug" / f"{image_id}.png", gt)
    res = clipes("eval", "--work", work / "methods" / "weakclip", "--split", split, "--gt-dir", gt)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((work / "methods" / "weakclip" / "eval.json").read_text())
    assert report["images"] == 6 and 0.0 <= report["stages"]["masks"]["with_ignored"]["miou"] <= 1.0


def _reference_config(folder: Path) -> Path:
    """The golden's model (the release at co-attention / FPN width 32, crop 384) with its test settings."""
    path = folder / "golden_config.py"
    path.write_text(f"""_base_ = ['{VOC_CONFIG}']
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(input_resolution=384, adapter_norm='BN', coattention=dict(width=32),
             neck=dict(in_channels=[128 + 21] * 4, out_channels=32),
             decode_head=dict(in_channels=[32, 32, 32, 32], channels=32, norm_cfg=norm_cfg),
             feature_size=(48, 48), test_cfg=dict(crop_size=384, stride=256))
masks = dict(img_scale=(1536, 384))
""")
    return path


def _reference_checkpoint(path: Path, with_clip: bool) -> Path:
    """The golden's weights saved as mmseg 0.19 does (DDP prefixes), with or without the CLIP tensors."""
    from weakclip_helpers import build, model_config

    state = torch.load(WEAK / "trainable_weights.pt", weights_only=True)
    if with_clip:  # the full model state, the CLIP tensors under the reference's own key names
        net = build(model_config(WEAK / "clip.pt"))
        clip_tensors = {k: v.detach().clone() for k, v in net.named_parameters()
                        if k.startswith(("backbone.", "text_encoder.")) and not k.startswith("backbone.fpn")}
        assert len(clip_tensors) > 100
        clip_tensors["backbone.ln_post.bias"] = clip_tensors["backbone.ln_post.bias"] + 0.125  # a trained CLIP
        state = {**clip_tensors, **state}
    torch.save({"meta": {"mmseg_version": "0.19.0"}, "state_dict": {f"module.{k}": v for k, v in state.items()}},
               path)
    return path


def test_reference_checkpoint_reproduces_the_reference_masks(tmp_path):
    """A released-style checkpoint (no CLIP tensors) makes the pseudo masks of the reference's
    tools/make_crf.py on the golden images."""
    ckpt = _reference_checkpoint(tmp_path / "iter_8000.pth", with_clip=False)
    voc = WEAK / "VOCdevkit" / "VOC2012"
    res = clipes("masks-weakclip", "--checkpoint", ckpt, "--clip", WEAK / "clip.pt", "--config",
                 _reference_config(tmp_path), "--data-root", voc, "--split",
                 voc / "ImageSets" / "Segmentation" / "trainaug.txt", "--out", tmp_path / "out", "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    masks = np.load(WEAK / "pseudo_masks.npz")
    for image_id in ("wc_002", "wc_003"):
        got = np.asarray(Image.open(tmp_path / "out" / "masks" / f"{image_id}.png"))
        assert got.shape == masks[f"{image_id}_crf"].shape
        assert (got == masks[f"{image_id}_crf"]).mean() >= 0.999


def test_reference_checkpoint_with_clip_weights_uses_them(tmp_path):
    from clipes.mmseg_ext.weakclip import load_model

    ckpt = _reference_checkpoint(tmp_path / "full.pth", with_clip=True)
    model, cfg, info = load_model(ckpt, str(WEAK / "clip.pt"), _reference_config(tmp_path), echo=lambda _: None)
    assert model.checkpoint_kind == "reference" and info == {}
    plain, _, _ = load_model(_reference_checkpoint(tmp_path / "bare.pth", with_clip=False), str(WEAK / "clip.pt"),
                             _reference_config(tmp_path), echo=lambda _: None)
    assert torch.allclose(model.backbone.ln_post.bias, plain.backbone.ln_post.bias + 0.125)
    assert torch.equal(model.contexts, plain.contexts) and torch.equal(model.beta, plain.beta)


def test_frozen_clip_run_saves_no_clip_tensor(trained, tmp_path):
    data, split, work, config, _ = trained
    res = clipes(*train_args(work, config, "--frozen-clip", "--out", tmp_path / "frozen", iters=2))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "CLIP frozen" in res.stdout
    state = torch.load(tmp_path / "frozen" / "iter_2.pth", weights_only=True)["state_dict"]
    assert state and not any(k.startswith(("clip_delta.", "text_encoder.")) for k in state)


def _classes(folder: Path, n: int) -> Path:
    path = folder / "classes.tsv"
    path.write_text("".join(f"thing{i}\tthing {i}\n" for i in range(n)))
    return path


def _write_seed(folder: Path, image_id: str, array: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), "L").save(folder / f"{image_id}.png")


def test_bad_input_is_one_line(trained, tmp_path):
    data, split, work, config, _ = trained

    def said(res):
        return res.stdout + res.stderr

    def seeds_with(name, mutate):
        folder = tmp_path / name
        for image_id in IDS[:3]:
            gt = np.asarray(Image.open(GOLDEN / "SegmentationClassAug" / f"{image_id}.png")).copy()
            _write_seed(folder, image_id, mutate(image_id, gt))
        return folder

    from clipes.errors import UserError
    from clipes.mmseg_ext.weakclip import train_config
    from clipes.weakclip.options import TrainOptions

    def refused(**kwargs) -> str:
        options = dict(config=config, clip=str(CLIP), data_root=data, dataset="voc12", iters=2, jobs=0)
        with pytest.raises(UserError) as info:
            train_config(TrainOptions(**{**options, **kwargs}), echo=lambda _: None)
        return str(info.value)

    # values outside the class range: one line from the command, before anything is trained
    bad = seeds_with("values", lambda i, gt: np.where(gt == 0, 40, gt) if i == IDS[1] else gt)
    res = clipes("train-weakclip", "--config", config, "--clip", CLIP, "--data-root", data, "--dataset", "voc12",
                 "--seeds", bad, "--out", tmp_path / "o1", "--no-progress")
    assert res.returncode == 2 and "values [40]" in said(res) and IDS[1] in said(res) and "Traceback" not in said(res)
    assert len(said(res).strip().splitlines()) == 1 and not (tmp_path / "o1" / "iter_2.pth").exists()
    # a seed whose size differs from its image
    bad = seeds_with("size", lambda i, gt: gt[:-5] if i == IDS[2] else gt)
    message = refused(seeds=bad, out=tmp_path / "o2")
    assert "label map is" in message and IDS[2] in message
    # a listed id without a seed
    listed = tmp_path / "listed.txt"
    listed.write_text("\n".join(IDS[:4]) + "\n")
    message = refused(seeds=seeds_with("ok", lambda i, gt: gt), split=listed, out=tmp_path / "o3")
    assert f"{IDS[3]}.png: file not found" in message
    # an empty split
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert refused(seeds=tmp_path / "ok", split=empty, out=tmp_path / "o4")
    # a CLIP whose width does not fit the released config (768 + 21 neck inputs)
    message = refused(work=work, config=VOC_CONFIG, out=tmp_path / "o5", dataset=None, data_root=None)
    assert "width 128" in message and "expects 789" in message
    # a CLIP with too few blocks
    short = save_state_dict(make_tiny_clip(layers=3), tmp_path / "short.pt")
    assert "3 blocks" in refused(work=work, clip=str(short), out=tmp_path / "o6", dataset=None, data_root=None)
    # seeds of another label space
    assert "label space voc has 20" in refused(work=work, config=VOC_CONFIG, classes=_classes(tmp_path, 6),
                                               out=tmp_path / "o9")
    # a checkpoint of another model, and a CLIP that does not fit a checkpoint
    torch.save({"state_dict": {"backbone.weight": torch.zeros(1)}}, tmp_path / "seg.pth")
    res = clipes("masks-weakclip", "--checkpoint", tmp_path / "seg.pth", "--work", work, "--out", tmp_path / "o7",
                 "--no-progress")
    assert res.returncode == 2 and "not a WeakCLIP checkpoint" in said(res)
    narrow = save_state_dict(make_tiny_clip(width=64, layers=12, text_width=64, embed_dim=64), tmp_path / "n.pt")
    res = clipes("masks-weakclip", "--checkpoint", work / "weakclip" / "iter_4.pth", "--clip", narrow,
                 "--work", work, "--out", tmp_path / "o8", "--no-progress")
    assert res.returncode == 2 and "width" in said(res) and "Traceback" not in said(res)
    # masks never go over the seeds
    res = clipes("masks-weakclip", "--checkpoint", work / "weakclip" / "iter_4.pth", "--work", work, "--out", work,
                 "--no-progress")
    assert res.returncode == 2 and "holds the seeds" in said(res)


def test_two_process_gloo_run(trained, tmp_path):
    data, split, work, config, _ = trained
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29533", "-m", "stages.cli",
                             *map(str, train_args(work, config, "--launcher", "pytorch", "--out", tmp_path / "w"))],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("train-weakclip: done") == 1
    logs = sorted((tmp_path / "w").glob("*/*.log"))
    assert logs and any("Distributed training: True" in log.read_text() for log in logs)
    state = torch.load(tmp_path / "w" / "iter_4.pth", weights_only=True)["state_dict"]
    assert state and not any(k.startswith("text_encoder.") for k in state)


def test_a_truncated_jpeg_is_left_out_once_and_training_goes_on(tmp_path):
    data = tmp_path / "data"
    copy_golden(data, IDS[:6])
    work = tmp_path / "work"
    write_clipes_masks(work, data, IDS[:6])
    bad = data / "JPEGImages" / f"{IDS[2]}.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # a download cut short
    result = clipes(*train_args(work, small_config(tmp_path), iters=2))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(f"failed {IDS[2]}:") == 1 and "Traceback" not in result.stderr
    assert "5 seed masks (1 left out)" in result.stdout
    out = work / "weakclip"
    assert list(json.loads((out / "manifest.json").read_text())["failures"]) == [IDS[2]]
    assert IDS[2] not in (out / "train_split.txt").read_text().split()
    assert (out / "iter_2.pth").is_file()
