"""`clipes train-excel / predict-excel / masks-excel / cams-excel` end to end on the golden images with
the golden 12-block CLIP and the ExCEL golden's attribute bank (tiny decoder, 64-pixel crops), and their
answers to bad input."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from clipes.data.prompts import class_and_background_lists
from clipes.store import camstore, maskstore

from conftest import GOLDEN, make_tiny_clip, save_state_dict
from helpers import assert_same_checkpoint, clipes, copy_golden

CLIP = GOLDEN / "clip.pt"
BANK = GOLDEN.parent / "excel-small" / "attr_bank.npz"
IDS = GOLDEN.joinpath("split.txt").read_text().split()


def train_args(data, split, work, *extra, iters=4, attributes=BANK):
    return ["train-excel", "--data-root", data, "--split", split, "--clip", CLIP, "--attributes", attributes,
            "--work", work, "--width", 16, "--iters", iters, "--batch", 2, "--crop", 64, "--jobs", 0,
            "--checkpoint-interval", 2, "--crop-rule", "first", "--no-progress", *extra]


def one_error(result, *words):
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert all(word in errors[0] for word in words), errors[0]


def descriptor_file(path, sentences=2, skip=()):
    """A clipes-written descriptor JSON for the VOC classes (two plain sentences each)."""
    voc, _ = class_and_background_lists("voc12")
    data = {name: [f"a clean origami {name}. it has a shape of its own {i}." for i in range(sentences)]
            for name in voc.names if name not in skip}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("excel")
    data = root / "data"
    split = copy_golden(data, IDS[:6])
    work = root / "work"
    result = clipes(*train_args(data, split, work))
    assert result.returncode == 0, result.stdout + result.stderr
    return data, split, work, result


def test_train_writes_decoder_only_checkpoints_that_resume_bit_for_bit(trained, tmp_path):
    data, split, work, result = trained
    out = work / "excel"
    assert "train-excel: 6 images, 20 classes, 4 iterations (dynamic CAM from 2, self affinity from 3)" in result.stdout
    ckpt = torch.load(out / "iter_4.pth", map_location="cpu", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("decoder.") for k in keys)
    assert not any("visual." in k or "encoder" in k for k in keys)  # no CLIP
    branches = {k.split(".")[3] for k in keys if k.startswith("decoder.decoder_fts_fuse.linears_modulelist.")}
    clip_state = torch.load(CLIP, map_location="cpu", weights_only=True)
    blocks = {k.split(".")[3] for k in clip_state if k.startswith("visual.transformer.resblocks.")}
    assert blocks and branches == blocks  # one per CLIP block
    meta = ckpt["meta"]["excel"]
    assert meta["clip_sha256"] == hashlib.sha256(CLIP.read_bytes()).hexdigest()
    assert meta["attributes"]["kind"] == "bank" and meta["attributes"]["clusters"] == np.load(BANK)["flags"].shape[1]
    assert len(meta["classes"]) == len(class_and_background_lists("voc12")[0].names)
    assert json.loads((out / "manifest.json").read_text())["stage"] == "excel"
    copy = tmp_path / "work"  # killed after its checkpoint at 2
    shutil.copytree(work, copy)
    (copy / "excel" / "iter_4.pth").unlink()
    (copy / "excel" / "last_checkpoint").write_text("iter_2.pth")
    resumed = clipes(*train_args(data, split, copy))
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-2000:]
    assert_same_checkpoint(out / "iter_4.pth", copy / "excel" / "iter_4.pth")


def test_predict_masks_and_training_free_cams_feed_eval_refine_and_viz(trained, tmp_path):
    data, split, work, _ = trained
    ckpt = work / "excel" / "iter_4.pth"
    pred = clipes("predict-excel", "--checkpoint", ckpt, "--images", data / "JPEGImages", "--split", split,
                  "--work", tmp_path, "--no-progress")
    assert pred.returncode == 0, pred.stdout + pred.stderr
    assert "predict-excel: 6 done" in pred.stdout
    masks = clipes("masks-excel", "--checkpoint", ckpt, "--data-root", data, "--split", split,
                   "--work", tmp_path, "--no-progress")  # ATTRIBUTES: the bank the checkpoint names
    assert masks.returncode == 0, masks.stdout + masks.stderr
    for image_id in IDS[:6]:
        label = maskstore.read_png(maskstore.png_path(tmp_path / "masks", image_id))
        assert label.shape == maskstore.read_png(GOLDEN / "SegmentationClassAug" / f"{image_id}.png").shape
        assert 255 not in np.unique(label)
    scores = clipes("eval", "--work", tmp_path, "--split", split, "--data-root", GOLDEN)
    assert scores.returncode == 0, scores.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert {"masks", "predictions"} <= set(report["stages"])
    again = clipes("masks-excel", "--checkpoint", ckpt, "--data-root", data, "--split", split,
                   "--work", tmp_path, "--no-progress")
    assert "6 already done" in again.stdout

    free = tmp_path / "free"  # no training at all
    cams = clipes("cams-excel", "--data-root", data, "--split", split, "--clip", CLIP, "--attributes", BANK,
                  "--work", free, "--no-progress")
    assert cams.returncode == 0, cams.stdout + cams.stderr
    assert "cams-excel: 6 done" in cams.stdout
    for image_id in IDS[:6]:
        cam = camstore.read_cam_file(camstore.cam_path(free / "cams", image_id))
        h, w = cam.image_size
        assert cam.cams.shape[1:] == (-(-h // 16), -(-w // 16)) and 0 <= cam.cams.min() and cam.cams.max() <= 1
        assert len(cam.keys) > 0
    refine = clipes("refine", "--work", free, "--out", free / "caa", "--no-progress")
    assert refine.returncode == 0, refine.stdout + refine.stderr
    assert len(list((free / "caa" / "masks").glob("*.png"))) == 6
    scored = clipes("eval", "--work", free, "--split", split, "--data-root", GOLDEN)
    assert scored.returncode == 0 and json.loads((free / "eval.json").read_text())["stages"]["masks"]
    viz = clipes("viz", "--work", free, "--no-progress")
    assert viz.returncode == 0, viz.stdout + viz.stderr
    assert len(list((free / "viz" / "panels").glob("*.png"))) == 6
    again = clipes("cams-excel", "--data-root", data, "--split", split, "--clip", CLIP, "--attributes", BANK,
                   "--work", free, "--no-progress")
    assert "6 already done" in again.stdout


def test_a_reference_checkpoint_with_its_clip_predicts(trained, tmp_path):
    data, _, _, _ = trained
    init = np.load(GOLDEN.parent / "excel-small" / "decoder_init.npz")
    full = {**{f"module.{k}": torch.from_numpy(init[k]) for k in init.files},
            "module.encoder.visual.proj": torch.zeros(3)}  # the reference saves the CLIP too
    torch.save(full, tmp_path / "model_iter_30000.pth")
    result = clipes("predict-excel", "--checkpoint", tmp_path / "model_iter_30000.pth", "--clip", CLIP,
                    "--images", data / "JPEGImages", "--out", tmp_path / "p", "--no-crf", "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tmp_path / "p").glob("*.png"))) == 6


def test_descriptors_are_clustered_once_per_clip(trained, tmp_path):
    data, split, _, _ = trained
    descriptors = descriptor_file(tmp_path / "voc_descriptors.json")
    args = ("cams-excel", "--data-root", data, "--split", split, "--clip", CLIP, "--attributes", descriptors,
            "--clusters", 16, "--work", tmp_path / "w", "--no-labels", "--no-progress")
    first = clipes(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "clustering 40 sentences of 20 classes into 16 clusters" in first.stdout
    assert (tmp_path / "w" / "attribute_bank.npz").is_file()
    second = clipes(*args, "--force")
    assert second.returncode == 0 and "clustering" not in second.stdout
    result = clipes(*train_args(data, split, tmp_path / "t", iters=1, attributes=descriptors), "--clusters", 16)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "attributes descriptors K=16" in result.stdout


def test_bad_input_is_one_line(trained, tmp_path):
    data, split, work, _ = trained
    ckpt = work / "excel" / "iter_4.pth"
    free = ("cams-excel", "--data-root", data, "--split", split, "--clip", CLIP, "--no-progress")
    one_error(clipes(*free, "--work", tmp_path / "w0"), "give ATTRIBUTES")
    one_error(clipes(*free, "--work", tmp_path / "w1", "--attributes", tmp_path / "none.pth"), "not found")
    garbage = tmp_path / "bank.pth"
    garbage.write_text("not a bank")
    one_error(clipes(*free, "--work", tmp_path / "w2", "--attributes", garbage), str(garbage))
    narrow = tmp_path / "narrow.npz"
    np.savez(narrow, centers=np.zeros((32, 112), np.float32), flags=np.zeros((20, 112), np.float32))
    one_error(clipes(*free, "--work", tmp_path / "w3", "--attributes", narrow), "width 32", "64-dimensional")
    few = tmp_path / "few.npz"
    np.savez(few, centers=np.zeros((64, 10), np.float32), flags=np.zeros((20, 10), np.float32))
    one_error(clipes(*free, "--work", tmp_path / "w4", "--attributes", few), "10 clusters", "NaN")
    missing = descriptor_file(tmp_path / "d.json", skip=("tvmonitor",))
    one_error(clipes(*free, "--work", tmp_path / "w5", "--attributes", missing, "--clusters", 16),
              "no sentences for class(es) tvmonitor")
    one_error(clipes(*train_args(data, split, tmp_path / "w6")[:-3], "--crop-rule", "mask"),
              "ground-truth masks", "CROP_RULE=first")
    other = save_state_dict(make_tiny_clip(width=64, layers=12), tmp_path / "c64.pt")
    one_error(clipes("predict-excel", "--checkpoint", ckpt, "--clip", other, "--images", data / "JPEGImages",
                     "--out", tmp_path / "w7", "--no-progress"), "width 64", "width 128")
    weclip = {f"decoder_fts_fuse.linears_modulelist.{i}.proj.weight": torch.zeros(16, 128) for i in range(11)}
    weclip.update({"decoder_fts_fuse.linear_fuse.weight": torch.zeros(16, 176, 1, 1),
                   "decoder.linear_pred.weight": torch.zeros(21, 16, 1, 1)})
    torch.save(weclip, tmp_path / "weclip.pth")
    one_error(clipes("predict-excel", "--checkpoint", tmp_path / "weclip.pth", "--clip", CLIP, "--images",
                     data / "JPEGImages", "--out", tmp_path / "w8", "--no-progress"), "a WeCLIP decoder?")
    for folder in ("w0", "w1", "w2", "w3", "w4", "w5"):
        assert not (tmp_path / folder / "cams").exists(), folder  # refused before any work
