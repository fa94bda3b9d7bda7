"""`clipes train-seg / test-seg / predict` end to end on a synthetic set with the tiny CPU config."""

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
from mmengine.config import Config
from PIL import Image

from clipes.store import maskstore

from helpers import assert_same_checkpoint, clipes, run_and_kill
from seg_helpers import make_seg_set

TINY = Path(__file__).parents[2] / "segmenter_configs" / "deeplabv2_r18-tiny_1xb8-300_pseudo-64x64.py"
THREE = []  # the tiny config takes its class count (3) from the masks' manifest


def train_args(work, out, iters=40, *extra):
    return ["train-seg", "--config", TINY, "--work", work, "--out", out, *THREE,
            "--option", f"train_cfg.max_iters={iters}", "--option", f"train_cfg.val_interval={iters}",
            "--option", "default_hooks.checkpoint.interval=20", *extra]


def scalars(out: Path) -> tuple[list[float], dict]:
    """Training losses in order, and the last validation record, from mmengine's scalars.json."""
    losses, val = [], {}
    for path in sorted(out.glob("*/vis_data/scalars.json")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                losses.append(record["loss"])
            if "mIoU" in record:
                val = record
    assert losses
    return losses, val


def majority_miou(data: Path) -> float:
    """mIoU (%) of predicting the most frequent class everywhere on val (the baseline to beat)."""
    ids = (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    gts = [np.asarray(Image.open(data / "SegmentationClass" / f"{i}.png")) for i in ids]
    counts = np.bincount(np.concatenate([g.ravel() for g in gts]), minlength=3)[:3]
    return 100.0 * counts.max() / counts.sum() / 3  # IoU of the majority class, zero for the others


@pytest.fixture(scope="module")
def seg_set(tmp_path_factory):
    return make_seg_set(tmp_path_factory.mktemp("segset"))


@pytest.fixture(scope="module")
def hard_run(seg_set):
    data, work = seg_set
    out = work.parent / "hard"
    result = clipes(*train_args(work, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_tiny_config_learns(seg_set, hard_run, mode):
    data, work = seg_set
    if mode == "hard":
        out, result = hard_run
    else:
        out = work.parent / "soft"
        result = clipes(*train_args(work, out, 40, "--loss", "soft"))
        assert result.returncode == 0, result.stderr[-3000:]
    assert f"train-seg: 24 images, {mode} loss, 3 classes" in result.stdout
    losses, val = scalars(out)
    assert np.mean(losses[-2:]) < 0.5 * losses[0], losses
    baseline = majority_miou(data)
    assert val["mIoU"] > baseline + 30, (val, baseline)
    used = Config.fromfile(out / TINY.name)  # the config as run
    assert used.model.decode_head.loss_decode.mode == mode
    trained = used.train_dataloader.dataset.dataset  # inside the resumable KeyedDataset
    assert used.train_dataloader.dataset.type == "KeyedDataset"
    assert (trained.confidence_dir is not None) == (mode == "soft")
    assert trained.seg_dir.endswith("/labels" if mode == "soft" else "/masks")
    assert (out / "iter_40.pth").is_file()


def test_checkpoints_load_with_weights_only(hard_run):
    out, _ = hard_run
    data = torch.load(out / "iter_40.pth", map_location="cpu", weights_only=True)
    assert data["meta"]["iter"] == 40 and data["state_dict"]


def test_test_seg_and_predict(seg_set, hard_run, tmp_path):
    data, work = seg_set
    out, _ = hard_run
    result = clipes("test-seg", "--config", TINY, "--work", work, "--checkpoint", out / "iter_40.pth", *THREE,
                    "--out", tmp_path / "test")
    assert result.returncode == 0, result.stderr[-2000:]
    miou = float(result.stdout.split("mIoU ")[1].split(",")[0])
    assert miou > majority_miou(data) + 30
    images = tmp_path / "images"
    shutil.copytree(data / "JPEGImages", images)
    (images / "broken.jpg").write_bytes(b"not an image")
    result = clipes("predict", "--checkpoint", out / "iter_40.pth", "--images", images, "--out", tmp_path / "pred")
    assert result.returncode == 1 and "predict: 24 done, 0 already done, 1 failed" in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("failed broken:")]
    prediction = maskstore.read_png(tmp_path / "pred" / "img_020.png")
    truth = maskstore.read_png(data / "SegmentationClass" / "img_020.png")
    assert prediction.shape == truth.shape and (prediction == truth).mean() > 0.9
    assert json.loads((tmp_path / "pred" / "manifest.json").read_text())["stage"] == "predictions"
    (images / "broken.jpg").unlink()
    again = clipes("predict", "--checkpoint", out / "iter_40.pth", "--images", images, "--out", tmp_path / "pred")
    assert again.returncode == 0 and "predict: 0 done, 24 already done, 0 failed" in again.stdout
    listed = tmp_path / "listed.txt"
    listed.write_text("img_020\nimg_021\nnot_there\n")
    some = clipes("predict", "--checkpoint", out / "iter_40.pth", "--images", images, "--out", tmp_path / "some",
                  "--split", listed)
    assert some.returncode == 1 and "predict: 2 done, 0 already done, 1 failed" in some.stdout
    assert sorted(p.name for p in (tmp_path / "some").glob("*.png")) == ["img_020.png", "img_021.png"]
    assert "failed not_there: image not found" in some.stdout


def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(seg_set, tmp_path):
    """Data order, augmentation, dropout: the resumed run's final checkpoint is the uninterrupted one's, bit for bit;
    it resumes from the saved iteration and removes a checkpoint the kill left half-written."""
    _, work = seg_set
    args = lambda out: train_args(work, out, 30, "--option", "default_hooks.checkpoint.interval=10")  # noqa: E731
    whole = clipes(*args(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "resumed"
    run_and_kill(args(out), out, "last_checkpoint", count=1)
    assert (out / "iter_10.pth").is_file() and not (out / "iter_30.pth").exists()
    (out / "iter_20.pth").write_bytes(b"half-written")  # as a kill during the next save would leave it
    result = clipes(*args(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and "removed 1 unfinished checkpoint" in result.stdout
    logs = sorted(out.glob("*/*.log"), key=lambda p: p.stat().st_mtime)
    assert len(logs) == 2 and "resumed epoch: 0, iter: 10" in logs[-1].read_text()  # mmengine's line, in its log
    assert "10/30 [" in result.stderr  # the progress bar starts where the run stopped
    assert torch.load(out / "iter_30.pth", weights_only=True)["meta"]["iter"] == 30
    assert_same_checkpoint(tmp_path / "whole" / "iter_30.pth", out / "iter_30.pth")


def test_two_process_gloo_run(seg_set, tmp_path):
    _, work = seg_set
    out = tmp_path / "dist"
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29517", "-m", "stages.cli",
                             *map(str, train_args(work, out, 20, "--launcher", "pytorch"))],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("train-seg: done") == 1  # rank 0 speaks
    logs = sorted(out.glob("*/*.log"))
    assert logs and any("Distributed training: True" in log.read_text() for log in logs)  # mmengine's report
    assert (out / "iter_20.pth").is_file()


def _mutate(work: Path, tmp_path: Path, how: str) -> Path:
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    mask = copy / "masks" / "img_003.png"
    if how == "size":
        maskstore.write_mask(mask, np.zeros((10, 10), np.uint8))
    elif how == "values":
        label = maskstore.read_png(mask).copy()
        label[0, 0] = 7
        maskstore.write_mask(mask, label)
    elif how == "missing-folder":
        shutil.rmtree(copy / "masks")
    elif how == "empty":
        for path in (copy / "masks").glob("*.png"):
            path.unlink()
    return copy


@pytest.mark.parametrize("how,message", [
    ("size", "img_003.png: label map is 10x10 but the image is 96x80"),
    ("values", "img_003.png: values [7] are neither a class (0..2) nor 255"),
    ("missing-folder", "no pseudo masks"),
    ("empty", "the training set split lists no images"),
])
def test_bad_inputs_stop_before_training(seg_set, tmp_path, how, message):
    _, work = seg_set
    copy = _mutate(work, tmp_path, how)
    result = clipes(*train_args(copy, tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not list((tmp_path / "out").glob("*.pth"))


def test_class_count_mismatch_and_unsafe_checkpoint_are_refused(seg_set, tmp_path):
    _, work = seg_set
    result = clipes("train-seg", "--config", TINY, "--work", work, "--out", tmp_path / "out",
                    "--option", "model.decode_head.num_classes=21")
    assert result.returncode == 2 and "num_classes=21 but the pseudo masks have 3 classes" in result.stderr
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "payload": Path("x")}, evil)  # an arbitrary pickled object
    result = clipes("predict", "--checkpoint", evil, "--config", TINY, "--images", tmp_path, "--out", tmp_path / "p")
    assert result.returncode == 2 and "cannot load checkpoint" in result.stderr and "safely" in result.stderr


def _foreign_masks(work, tmp_path):
    """The same masks without clipes' manifest, as CLIP-ES's own PNGs or a colleague's would come."""
    copy = tmp_path / "foreign"
    shutil.copytree(work / "masks", copy / "masks")
    (copy / "masks" / "manifest.json").unlink()
    return copy


def test_masks_made_elsewhere_take_their_classes_from_dataset_or_a_class_file(seg_set, tmp_path):
    from clipes.errors import UserError
    from clipes.mmseg_ext.runner import SegOptions, train_config

    data, work = seg_set
    foreign = _foreign_masks(work, tmp_path)
    base = dict(config=TINY, work=foreign, out=tmp_path / "out", data_root=data, val_split=None)
    with pytest.raises(UserError) as info:
        train_config(SegOptions(**base), echo=lambda _: None)
    assert "give DATASET=voc12|coco14 or CLASSES=<class file>" in str(info.value)
    classes = tmp_path / "classes.txt"
    classes.write_text("rectangle\ndisc\n")
    cfg = train_config(SegOptions(**base, classes=classes), echo=lambda _: None)
    assert cfg.model.decode_head.num_classes == 3
    assert cfg.train_dataloader.dataset.dataset.metainfo["classes"] == ("background", "rectangle", "disc")
    voc = train_config(SegOptions(**base, dataset="voc12"), echo=lambda _: None)
    assert voc.model.decode_head.num_classes == 21
    assert voc.train_dataloader.dataset.dataset.metainfo["classes"][1:3] == ("aeroplane", "bicycle")


def test_train_seg_cli_on_masks_made_elsewhere_with_a_class_file(seg_set, tmp_path):
    data, work = seg_set
    foreign = _foreign_masks(work, tmp_path)
    classes = tmp_path / "classes.txt"
    classes.write_text("rectangle\ndisc\n")
    args = ["train-seg", "--config", TINY, "--work", foreign, "--out", tmp_path / "out", "--data-root", data,
            "--option", "train_cfg.max_iters=2", "--option", "train_cfg.val_interval=2"]
    refused = clipes(*args)
    assert refused.returncode == 2 and "give DATASET=voc12|coco14 or CLASSES=<class file>" in refused.stderr
    result = clipes(*args, "--classes", classes)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "iter_2.pth").is_file()


def test_console_shows_a_progress_bar_and_validation_lines_and_the_full_log_goes_to_the_file(hard_run):
    out, result = hard_run
    console = result.stdout + result.stderr
    assert "train-seg: validation at iteration 40: aAcc" in console and "mIoU" in console
    assert "train-seg:" in result.stderr and "it/s" in result.stderr  # tqdm's bar
    assert f"train-seg: done; checkpoints and logs in {out}" in result.stdout
    for dump in ("System environment", "Config:", "Hooks will be executed", "Iter(train)", "UserWarning"):
        assert dump not in console, dump
    logs = sorted(out.glob("*/*.log"))
    assert logs
    text = logs[-1].read_text()
    assert "System environment" in text and "Iter(train)" in text and "Iter(val)" in text
    assert f"full log in {logs[-1]}" in result.stdout


def test_verbose_prints_mmengines_log_as_before(seg_set, tmp_path):
    _, work = seg_set
    result = clipes(*train_args(work, tmp_path / "out", 2), "--verbose")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "System environment" in result.stdout and "Iter(val)" in result.stdout
    assert "validation at iteration" not in result.stdout + result.stderr
