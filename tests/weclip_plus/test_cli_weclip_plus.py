"""`clipes train-weclipplus / predict-weclipplus / masks-weclipplus` end to end on the golden images with
the golden 12-block CLIP and the WeCLIP+ golden's tiny DINOv2 (tiny decoder, 64-pixel crops), and their
answers to bad input."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from clipes.data.prompts import class_and_background_lists
from clipes.store import maskstore

from conftest import GOLDEN, make_tiny_clip, save_state_dict
from helpers import assert_same_checkpoint, clipes, copy_golden, make_tiny_dino

CLIP = GOLDEN / "clip.pt"
DINO = GOLDEN.parent / "weclipplus-small" / "dino.pt"
IDS = GOLDEN.joinpath("split.txt").read_text().split()


def train_args(data, split, work, *extra, iters=4, dino=DINO, clip=CLIP):
    return ["train-weclipplus", "--data-root", data, "--split", split, "--clip", clip, "--dino", dino, "--work", work,
            "--width", 16, "--iters", iters, "--batch", 2, "--crop", 64, "--jobs", 0, "--checkpoint-interval", 2,
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("weclipplus")
    data = root / "data"
    split = copy_golden(data, IDS[:6])
    work = root / "work"
    result = clipes(*train_args(data, split, work))
    assert result.returncode == 0, result.stdout + result.stderr
    return data, split, work, result


def test_train_writes_decoder_only_checkpoints_that_resume_bit_for_bit(trained, tmp_path):
    data, split, work, result = trained
    out = work / "weclipplus"
    assert "train-weclipplus: 6 images, 20 classes, 4 iterations (pseudo-label override after 2)" in result.stdout
    ckpt = torch.load(out / "iter_4.pth", map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("decoder.") for k in keys)
    assert any(k.startswith("decoder.dino_decoder_fts_fuse.") for k in keys)
    assert not any("visual." in k or "encoder" in k or "patch_embed" in k or "cls_token" in k for k in keys)  # no backbone
    meta = ckpt["meta"]["weclipplus"]
    assert meta["clip_sha256"] == hashlib.sha256(CLIP.read_bytes()).hexdigest()
    assert meta["dino_sha256"] == hashlib.sha256(DINO.read_bytes()).hexdigest()
    dino_width = torch.load(DINO, map_location="cpu", weights_only=True)["cls_token"].shape[-1]
    assert meta["decoder"]["dino_width"] == dino_width
    assert len(meta["classes"]) == len(class_and_background_lists("voc12")[0].names)
    assert json.loads((out / "manifest.json").read_text())["stage"] == "weclipplus"
    copy = tmp_path / "work"  # killed after its checkpoint at 2
    shutil.copytree(work, copy)
    (copy / "weclipplus" / "iter_4.pth").unlink()
    (copy / "weclipplus" / "last_checkpoint").write_text("iter_2.pth")
    resumed = clipes(*train_args(data, split, copy))
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-2000:]
    assert_same_checkpoint(out / "iter_4.pth", copy / "weclipplus" / "iter_4.pth")


def test_predict_and_masks_feed_eval(trained, tmp_path):
    data, split, work, _ = trained
    ckpt = work / "weclipplus" / "iter_4.pth"
    pred = clipes("predict-weclipplus", "--checkpoint", ckpt, "--images", data / "JPEGImages", "--split", split,
                  "--work", tmp_path, "--no-progress")
    assert pred.returncode == 0, pred.stdout + pred.stderr
    assert "predict-weclipplus: 6 done" in pred.stdout
    masks = clipes("masks-weclipplus", "--checkpoint", ckpt, "--data-root", data, "--split", split,
                   "--work", tmp_path, "--no-progress")
    assert masks.returncode == 0, masks.stdout + masks.stderr
    for image_id in IDS[:6]:
        label = maskstore.read_png(maskstore.png_path(tmp_path / "masks", image_id))
        assert label.shape == maskstore.read_png(GOLDEN / "SegmentationClassAug" / f"{image_id}.png").shape
        assert 255 not in np.unique(label)
    scores = clipes("eval", "--work", tmp_path, "--split", split, "--data-root", GOLDEN)
    assert scores.returncode == 0, scores.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {"masks", "predictions"} <= set(report["stages"])
    again = clipes("masks-weclipplus", "--checkpoint", ckpt, "--data-root", data, "--split", split,
                   "--work", tmp_path, "--no-progress")
    assert "6 already done" in again.stdout


def test_a_reference_checkpoint_with_its_backbones_predicts(trained, tmp_path):
    data, _, _, _ = trained
    state = torch.load(GOLDEN.parent / "weclipplus-small" / "decoder_init.pt", weights_only=True)
    full = {**{f"module.{k}": v for k, v in state.items()}, "module.encoder.visual.proj": torch.zeros(3),
            "module.dino_encoder.cls_token": torch.zeros(1, 1, 64)}  # the reference saves both backbones too
    torch.save(full, tmp_path / "wetr_iter_30000.pth")
    result = clipes("predict-weclipplus", "--checkpoint", tmp_path / "wetr_iter_30000.pth", "--clip", CLIP,
                    "--dino", DINO, "--images", data / "JPEGImages", "--out", tmp_path / "p", "--no-crf",
                    "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tmp_path / "p").glob("*.png"))) == 6


def test_bad_input_is_one_line(trained, tmp_path):
    data, split, work, _ = trained
    ckpt = work / "weclipplus" / "iter_4.pth"

    def one_error(result, *words):
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert all(word in errors[0] for word in words), errors[0]

    one_error(clipes(*train_args(data, split, tmp_path / "w1", dino=CLIP)), "is a CLIP checkpoint, not a DINOv2")
    one_error(clipes(*train_args(data, split, tmp_path / "w2", dino=make_tiny_dino(tmp_path / "p16.pth", patch=16))),
              "16-pixel patches")
    narrow = make_tiny_dino(tmp_path / "narrow.pth", width=32)
    one_error(clipes("masks-weclipplus", "--checkpoint", ckpt, "--dino", narrow, "--data-root", data, "--split", split,
                     "--work", tmp_path / "w3", "--no-progress"), "width 32", "trained on width 64")
    other = save_state_dict(make_tiny_clip(width=64, layers=12), tmp_path / "c64.pt")
    one_error(clipes("predict-weclipplus", "--checkpoint", ckpt, "--clip", other, "--images", data / "JPEGImages",
                     "--out", tmp_path / "w4", "--no-progress"), "width 64", "width 128")
    one_error(clipes("train-weclipplus", "--data-root", data, "--split", split, "--clip", CLIP, "--dino",
                     tmp_path / "none.pth", "--work", tmp_path / "w5"), "not found")
    weclip_ckpt = tmp_path / "weclip.pth"
    torch.save({"decoder_fts_fuse.linear_fuse.weight": torch.zeros(1)}, weclip_ckpt)
    one_error(clipes("predict-weclipplus", "--checkpoint", weclip_ckpt, "--images", data / "JPEGImages",
                     "--out", tmp_path / "w6", "--no-progress"), "not a WeCLIP+ checkpoint")
    # a VOC image whose XML has no object: one failed line, the rest goes on
    bare = tmp_path / "bare"
    bare_split = copy_golden(bare, IDS[:3])
    xml = bare / "Annotations" / f"{IDS[0]}.xml"
    text = xml.read_text()
    xml.write_text(text[:text.index("<object>")] + "</annotation>")
    result = clipes("masks-weclipplus", "--checkpoint", ckpt, "--data-root", bare, "--split", bare_split,
                    "--work", tmp_path / "w7", "--no-progress")
    assert result.returncode == 1 and result.stdout.count(f"failed {IDS[0]}: image has no labels") == 1
    assert len(list((tmp_path / "w7" / "masks").glob("*.png"))) == 2
    result = clipes(*train_args(bare, bare_split, tmp_path / "w8", iters=2))
    assert result.returncode == 0 and f"failed {IDS[0]}: image has no labels" in result.stdout
    assert list(json.loads((tmp_path / "w8" / "weclipplus" / "manifest.json").read_text())["failures"]) == [IDS[0]]
