"""`clipes train-weclip / predict-weclip / masks-weclip` end to end on the golden images with the
golden 12-block CLIP (tiny decoder, 64-pixel crops), and their answers to bad input."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import GOLDEN, make_tiny_clip, save_state_dict
from helpers import (
    assert_same_checkpoint,
    clipes,
    clipes_on_a_full_disk,
    copy_golden,
    hold_in_another_process,
    make_voc,
    noise_image,
)

CLIP = GOLDEN / "clip.pt"
IDS = GOLDEN.joinpath("split.txt").read_text().split()


def train_args(data, split, work, *extra, iters=4, clip=CLIP):
    return ["train-weclip", "--data-root", data, "--split", split, "--clip", clip, "--work", work, "--width", 16,
            "--iters", iters, "--batch", 2, "--crop", 64, "--jobs", 0, "--checkpoint-interval", 2, "--no-progress",
            *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("weclip")
    data = root / "data"
    split = copy_golden(data, IDS[:6])
    work = root / "work"
    result = clipes(*train_args(data, split, work))
    assert result.returncode == 0, result.stdout + result.stderr
    return data, split, work, result


def test_train_writes_decoder_only_checkpoints(trained):
    data, split, work, result = trained
    out = work / "weclip"
    assert "train-weclip: 6 images, 20 classes, 4 iterations" in result.stdout
    assert sorted(p.name for p in out.glob("iter_*.pth")) == ["iter_2.pth", "iter_4.pth"]
    ckpt = torch.load(out / "iter_4.pth", map_location="cpu", weights_only=True)  # loads safely
    keys = list(ckpt["state_dict"])
    assert keys and all(k.startswith("decoder.") for k in keys)
    assert not any("visual" in k or "encoder" in k for k in keys)
    meta = ckpt["meta"]["weclip"]
    assert meta["clip_sha256"] == "b7b8966159214189ac62878ea465b781a9e68e07a86847da484864ea84454aaf"
    assert len(meta["classes"]) == 20 and meta["decoder"]["width"] == 16
    assert (out / "iter_4.pth").stat().st_size < 2_000_000  # the CLIP (11.8 MB here) is not in it
    init = torch.load(out / "iter_2.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert any(not torch.equal(init[k], ckpt["state_dict"][k]) for k in keys)  # it trained
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "weclip" and manifest["training"]["iters"] == 4


def test_train_resumes_after_a_kill(trained, tmp_path):
    data, split, work, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    out = copy / "weclip"
    (out / "iter_4.pth").unlink()  # as if killed after the checkpoint at 2
    (out / "last_checkpoint").write_text(str(out / "iter_2.pth"))
    result = clipes(*train_args(data, split, copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from {out / 'iter_2.pth'}" in result.stdout
    assert (out / "iter_4.pth").is_file()
    assert torch.load(out / "iter_4.pth", weights_only=True)["meta"]["iter"] == 4
    # data order, augmentation and dropout as in the uninterrupted run: the same checkpoint, bit for bit
    assert_same_checkpoint(work / "weclip" / "iter_4.pth", out / "iter_4.pth")


def test_predict_and_masks_feed_eval(trained, tmp_path):
    data, split, work, _ = trained
    ckpt = work / "weclip" / "iter_4.pth"
    pred = clipes("predict-weclip", "--checkpoint", ckpt, "--images", data / "JPEGImages", "--work", work,
                  "--no-progress")
    assert pred.returncode == 0, pred.stdout + pred.stderr
    assert "predict-weclip: 6 done, 0 already done, 0 failed" in pred.stdout
    parallel = clipes("predict-weclip", "--checkpoint", ckpt, "--images", data / "JPEGImages", "--out",
                      tmp_path / "parallel", "--jobs", 2, "--no-progress")
    assert parallel.returncode == 0, parallel.stdout + parallel.stderr
    for image_id in IDS[:6]:  # CRF in 2 worker processes: the same labels as in one
        assert np.array_equal(np.asarray(Image.open(tmp_path / "parallel" / f"{image_id}.png")),
                              np.asarray(Image.open(work / "predictions" / f"{image_id}.png")))
    masks = clipes("masks-weclip", "--checkpoint", ckpt, "--data-root", data, "--split", split, "--work", work,
                   "--no-progress")
    assert masks.returncode == 0, masks.stdout + masks.stderr
    for folder in (work / "predictions", work / "masks"):
        files = sorted(folder.glob("*.png"))
        assert [p.stem for p in files] == IDS[:6]
        for path in files:
            label = np.asarray(Image.open(path))
            w, h = Image.open(data / "JPEGImages" / f"{path.stem}.jpg").size
            assert label.shape == (h, w) and label.max() <= 20
        info = json.loads((folder / "manifest.json").read_text())
        assert info["method"] == "weclip" and len(info["classes"]) == 20
    again = clipes("masks-weclip", "--checkpoint", ckpt, "--data-root", data, "--split", split, "--work", work,
                   "--no-progress")
    assert "0 done, 6 already done" in again.stdout
    # another setting is refused, never overwritten
    other = clipes("predict-weclip", "--checkpoint", ckpt, "--images", data / "JPEGImages", "--work", work,
                   "--no-crf", "--no-progress")
    assert other.returncode != 0 and "made with other settings" in other.stdout + other.stderr
    gt = tmp_path / "gt"
    gt.mkdir()
    for image_id in IDS[:6]:
        shutil.copy(GOLDEN / "SegmentationClassAug" / f"{image_id}.png", gt)
    from clipes.viz import open_work

    folder = open_work(work, gt_dir=gt)
    assert folder.title("predictions", "segmenter") == "WeCLIP segmenter"
    assert folder.title("masks", "pseudo mask") == "WeCLIP pseudo mask"
    report = clipes("eval", "--work", work, "--split", split, "--gt-dir", gt)
    assert report.returncode == 0, report.stdout + report.stderr
    scores = json.loads((work / "eval.json").read_text())
    assert {"masks", "predictions"} <= set(scores["stages"])


def test_reference_decoder_checkpoint_predicts(tmp_path):
    data = tmp_path / "data"
    copy_golden(data, IDS[:1])
    decoder = Path(__file__).parents[1] / "data" / "weclip-small" / "decoder_init.pt"
    result = clipes("predict-weclip", "--checkpoint", decoder, "--clip", CLIP, "--images", data / "JPEGImages",
                    "--out", tmp_path / "pred", "--no-crf", "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "pred" / f"{IDS[0]}.png").is_file()
    no_clip = clipes("predict-weclip", "--checkpoint", decoder, "--images", data / "JPEGImages", "--out",
                     tmp_path / "p2", "--no-progress")
    assert no_clip.returncode == 2 and "give CLIP" in no_clip.stdout + no_clip.stderr


def test_bad_input_is_one_line(trained, tmp_path):
    data, split, work, _ = trained
    ckpt = work / "weclip" / "iter_4.pth"
    # a CLIP whose width differs from the checkpoint's
    other = save_state_dict(make_tiny_clip(width=64, layers=12), tmp_path / "narrow.pt")
    res = clipes("masks-weclip", "--checkpoint", ckpt, "--clip", other, "--data-root", data, "--split", split,
                 "--work", tmp_path / "w1", "--no-progress")
    assert res.returncode == 2 and "width 64" in res.stdout + res.stderr and "Traceback" not in res.stderr
    # a CLIP with too few blocks to train
    short = save_state_dict(make_tiny_clip(layers=3), tmp_path / "short.pt")
    res = clipes(*train_args(data, split, tmp_path / "w2", clip=short))
    assert res.returncode == 2 and "3 blocks" in res.stdout + res.stderr
    # a checkpoint whose class count differs from the dataset's
    res = clipes("masks-weclip", "--checkpoint", ckpt, "--dataset", "coco14", "--data-root", data, "--split", split,
                 "--work", tmp_path / "w3", "--no-progress")
    assert res.returncode == 2 and "21 classes" in res.stdout + res.stderr
    # an empty split
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    res = clipes(*train_args(data, empty, tmp_path / "w4"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    # a corrupt image and an image without labels: one failed line each, the rest goes on
    bad = tmp_path / "bad"
    bad_split = make_voc(bad, {"ok": (noise_image(80, 64), ["cat"]), "broken": (b"not a jpeg", ["dog"]),
                               "nolabel": (noise_image(80, 64, 1), []), "thin": (noise_image(400, 8, 2), ["cat"])})
    res = clipes("masks-weclip", "--checkpoint", ckpt, "--data-root", bad, "--split", bad_split,
                 "--work", tmp_path / "w5", "--no-progress")
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert any(line.startswith("failed broken:") and "cannot decode" in line for line in lines)
    assert any(line.startswith("failed nolabel:") and "no labels" in line for line in lines)
    assert any(line.startswith("failed thin:") and "below one 16-pixel patch" in line for line in lines)
    assert (tmp_path / "w5" / "masks" / "ok.png").is_file()
    assert not (tmp_path / "w5" / "masks" / "broken.png").exists()
    res = clipes(*train_args(bad, bad_split, tmp_path / "w6", iters=2))
    assert res.returncode == 0, res.stdout + res.stderr
    # both are left out up front, once each, and recorded in the run's manifest
    assert res.stdout.count("failed nolabel: image has no labels") == 1 and "2 skipped" in res.stdout
    assert res.stdout.count("failed broken: cannot decode") == 1
    recorded = json.loads((tmp_path / "w6" / "weclip" / "manifest.json").read_text())["failures"]
    assert sorted(recorded) == ["broken", "nolabel"]
    # a checkpoint of another model
    torch.save({"state_dict": {"backbone.weight": torch.zeros(1)}}, tmp_path / "seg.pth")
    res = clipes("predict-weclip", "--checkpoint", tmp_path / "seg.pth", "--clip", CLIP,
                 "--images", data / "JPEGImages", "--out", tmp_path / "p", "--no-progress")
    said = res.stdout + res.stderr
    assert res.returncode == 2 and "error:" in said and "not a WeCLIP checkpoint" in said


def test_two_process_gloo_run(trained, tmp_path):
    import os
    import subprocess
    import sys

    data, split, _, _ = trained
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", "29523", "-m", "stages.cli",
                             *map(str, train_args(data, split, tmp_path / "w", "--launcher", "pytorch"))],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("train-weclip: done") == 1  # rank 0 speaks
    logs = sorted((tmp_path / "w" / "weclip").glob("*/*.log"))
    assert logs and any("Distributed training: True" in log.read_text() for log in logs)
    state = torch.load(tmp_path / "w" / "weclip" / "iter_4.pth", weights_only=True)["state_dict"]
    assert state and all(k.startswith("decoder.") for k in state)


def _resume_copy(trained, tmp_path, name: str) -> Path:
    """A copy of the trained folder as a run killed after its checkpoint at 2 leaves it, its pointer
    naming the checkpoint by the *original* folder's absolute path (as mmengine writes it)."""
    _, _, work, _ = trained
    copy = tmp_path / name
    shutil.copytree(work, copy)
    (copy / "weclip" / "iter_4.pth").unlink()
    (copy / "weclip" / "last_checkpoint").write_text(str(work / "weclip" / "iter_2.pth"))
    return copy


def test_copied_and_moved_work_folders_resume_from_their_own_checkpoints(trained, tmp_path):
    data, split, work, _ = trained
    original = work / "weclip" / "iter_4.pth"
    before = original.stat().st_mtime_ns
    copy = _resume_copy(trained, tmp_path, "copy")
    result = clipes(*train_args(data, split, copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from {copy / 'weclip' / 'iter_2.pth'}" in result.stdout
    assert_same_checkpoint(original, copy / "weclip" / "iter_4.pth")  # finished in the copy
    assert original.stat().st_mtime_ns == before  # the original folder untouched
    assert (copy / "weclip" / "last_checkpoint").read_text() == "iter_4.pth"  # relative from now on
    assert "Loads checkpoint" not in result.stdout + result.stderr  # mmengine's line goes to the log only
    moved = tmp_path / "moved"
    _resume_copy(trained, tmp_path, "before-move").rename(moved)
    result = clipes(*train_args(data, split, moved))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert_same_checkpoint(original, moved / "weclip" / "iter_4.pth")


def test_a_pointer_that_is_empty_or_names_a_missing_checkpoint(trained, tmp_path):
    data, split, _, _ = trained
    copy = _resume_copy(trained, tmp_path, "empty")
    (copy / "weclip" / "last_checkpoint").write_text("")  # a kill while mmengine wrote it
    result = clipes(*train_args(data, split, copy))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming from {copy / 'weclip' / 'iter_2.pth'}" in result.stdout  # the newest one there
    missing = _resume_copy(trained, tmp_path, "missing")
    (missing / "weclip" / "iter_2.pth").unlink()
    result = clipes(*train_args(data, split, missing))
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr
    assert "iter_2.pth, which is not in" in lines[0] and "--no-resume" in lines[0]


def test_retraining_a_finished_folder_with_other_settings_names_what_works(trained):
    data, split, work, _ = trained
    result = clipes(*train_args(data, split, work, iters=6))
    assert result.returncode == 2 and "--force" not in result.stderr
    assert "train into another OUT, or delete" in result.stderr and str(work / "weclip") in result.stderr


def test_predict_counts_a_split_id_without_an_image_as_a_failure(trained, tmp_path):
    data, split, work, _ = trained
    ids = split.read_text().split()
    wanted = tmp_path / "split.txt"
    wanted.write_text("\n".join([ids[0], "nosuchimage"]) + "\n")
    out = tmp_path / "pred"
    result = clipes("predict-weclip", "--checkpoint", work / "weclip" / "iter_4.pth", "--images", data / "JPEGImages",
                    "--split", wanted, "--out", out, "--no-crf", "--no-progress")
    assert result.returncode == 1
    assert result.stdout.count("failed nosuchimage:") == 1 and "1 done, 0 already done, 1 failed" in result.stdout
    assert list(json.loads((out / "manifest.json").read_text())["failures"]) == ["nosuchimage"]


def test_an_option_given_overrides_only_itself(trained, tmp_path):
    """A checkpoint trained with a class file keeps it when another option is given (issue 27.6)."""
    from clipes.weclip.decoder import WeCLIPDecoder
    from clipes.weclip.runner import InferOptions, load_weclip

    classes = tmp_path / "three.tsv"
    classes.write_text("cat\tcat\ndog\tdog\nbird\tbird\n")
    decoder = WeCLIPDecoder(128, 11, 16, 4)
    meta = {"weclip": {"clip": str(CLIP), "model": {"dataset": "custom", "class_file": str(classes), "width": 16}}}
    torch.save({"state_dict": {f"decoder.{k}": v for k, v in decoder.state_dict().items()}, "meta": meta},
               tmp_path / "three.pth")
    loaded = load_weclip(InferOptions(checkpoint=tmp_path / "three.pth", model={"box_threshold": 0.5}))
    assert loaded.classes == ["cat", "dog", "bird"] and loaded.options.box_threshold == 0.5
    assert loaded.options.dataset == "custom" and loaded.options.late_blocks == 6
    # an explicit DATASET equal to the default still counts as given (coco14's defaults follow it)
    from stages.method_flags import pop_model
    from stages.weclip import MODEL_KEYS

    flags = {"checkpoint": tmp_path / "three.pth", "dataset": "voc12", "box_threshold": None}
    assert pop_model(flags, MODEL_KEYS) == {"dataset": "voc12"} and list(flags) == ["checkpoint"]
    _, _, work, _ = trained
    result = clipes("masks-weclip", "--checkpoint", work / "weclip" / "iter_4.pth", "--data-root", trained[0],
                    "--split", trained[1], "--out", tmp_path / "m", "--box-threshold", "0.5", "--no-progress")
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_writer_per_folder_and_a_killed_runs_lock_is_taken_over(trained, tmp_path):
    data, split, work, _ = trained
    out = tmp_path / "masks-out"
    args = ("masks-weclip", "--checkpoint", work / "weclip" / "iter_4.pth", "--data-root", data, "--split", split,
            "--out", out, "--no-progress")
    other = hold_in_another_process(out / "masks")  # a run still writing the folder
    try:
        result = clipes(*args, "--force", timeout=60)
        assert result.returncode == 2 and f"pid {other.pid}" in result.stderr and "being written" in result.stderr
        assert not list((out / "masks").glob("*.png"))  # nothing written into the other run's folder
        training = hold_in_another_process(tmp_path / "w" / "weclip")
        try:
            result = clipes(*train_args(data, split, tmp_path / "w"), timeout=60)
            assert result.returncode == 2 and f"pid {training.pid}" in result.stderr
        finally:
            training.kill()
            training.wait()
    finally:
        other.kill()  # killed: its lock is left behind
        other.wait()
    start = time.time()
    result = clipes(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.time() - start < 60 and "took over the lock" in result.stdout and str(other.pid) in result.stdout


def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(trained, tmp_path):
    data, split, work, _ = trained
    out = tmp_path / "full"
    result = clipes_on_a_full_disk(out, ".png", 2, "masks-weclip", "--checkpoint", work / "weclip" / "iter_4.pth",
                                   "--data-root", data, "--split", split, "--out", out, "--no-progress")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert errors == [f"error: no space left on device writing {out / 'masks'} ({errors[0].split('(')[-1]}"]
    assert len(list((out / "masks").glob("*.png"))) == 2 and not list((out / "masks").glob(".*.tmp-*"))
    result = clipes_on_a_full_disk(tmp_path / "t", ".pth", 0, *train_args(data, split, tmp_path / "t"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "error: no space left on device writing" in result.stderr and "iter_2.pth" in result.stderr
    assert not list((tmp_path / "t" / "weclip").glob("*.pth")) and not list((tmp_path / "t").rglob(".*.tmp-*"))
