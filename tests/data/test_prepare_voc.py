"""``clipes prepare-voc`` on synthetic VOC + SBD trees: train_aug and SegmentationClassAug against an
independent computation, a corrupt .mat, resume, missing parts, and cams + eval on the result."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from clipes.store import maskstore

from conftest import GOLDEN, GOLDEN_IDS
from helpers import CLIP, clipes, copy_golden

G = GOLDEN_IDS
VOC_TRAIN, VOC_VAL = G[0:4], G[4:6]
SBD_TRAIN, SBD_VAL = [G[2], G[3], G[4], G[6], G[7]], [G[5], G[8], G[9]]


def _size(image_id):
    with Image.open(GOLDEN / "JPEGImages" / f"{image_id}.jpg") as image:
        return image.size[1], image.size[0]


def _labels(seed, shape, ignore):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 21, size=shape).astype(np.uint8)
    if ignore:
        label[::7] = 255
    return label


def build_tree(root):
    """VOC2012 (all 12 golden images) + SBD; returns (voc, sbd, {id: VOC mask}, {id: SBD segmentation})."""
    voc, sbd = root / "VOC2012", root / "benchmark_RELEASE" / "dataset"
    copy_golden(voc, G)
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (sets / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    voc_masks, sbd_masks = {}, {}
    for n, image_id in enumerate(VOC_TRAIN + VOC_VAL):
        voc_masks[image_id] = _labels(n, _size(image_id), ignore=True)
        maskstore.write_mask(voc / "SegmentationClass" / f"{image_id}.png", voc_masks[image_id])
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    for n, image_id in enumerate(SBD_TRAIN + SBD_VAL):
        sbd_masks[image_id] = _labels(100 + n, _size(image_id), ignore=False)
        savemat(sbd / "cls" / f"{image_id}.mat", {"GTcls": {
            "Segmentation": sbd_masks[image_id], "Boundaries": np.zeros(1), "CategoriesPresent": np.arange(1, 3)}})
    return voc, sbd, voc_masks, sbd_masks


def test_train_aug_and_its_ground_truth_equal_an_independent_computation(tmp_path):
    voc, sbd, voc_masks, sbd_masks = build_tree(tmp_path)
    good = (sbd / "cls" / f"{G[9]}.mat").read_bytes()
    (sbd / "cls" / f"{G[9]}.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    first = clipes("prepare-voc", "--voc", voc, "--sbd", sbd.parent, "--no-progress")  # benchmark_RELEASE is found
    assert first.returncode == 1, first.stderr
    failed = [line for line in first.stdout.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1 and failed[0].startswith(f"failed {G[9]}: cannot read SBD segmentation"), first.stdout
    assert "Traceback" not in first.stdout + first.stderr

    expected_aug = sorted((set(SBD_TRAIN) | set(SBD_VAL) | set(VOC_TRAIN)) - set(VOC_VAL))
    assert expected_aug == sorted([G[0], G[1], G[2], G[3], G[6], G[7], G[8], G[9]])
    split = voc / "ImageSets" / "Segmentation" / "train_aug.txt"
    assert split.read_text().split() == expected_aug
    assert f"{len(expected_aug)} ids" in first.stdout and "warning: train_aug has 8 ids, not the 10582" in first.stdout

    (sbd / "cls" / f"{G[9]}.mat").write_bytes(good)
    second = clipes("prepare-voc", "--voc", voc, "--sbd", sbd, "--no-progress")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 from VOC, 1 from SBD, 9 already there, 0 failed" in second.stdout
    out = voc / "SegmentationClassAug"
    wanted = set(expected_aug) | set(VOC_VAL)
    assert maskstore.done_ids(out) == wanted
    for image_id in sorted(wanted):
        expected = voc_masks[image_id] if image_id in voc_masks else sbd_masks[image_id]
        written = maskstore.read_png(out / f"{image_id}.png")
        assert written.shape == expected.shape and np.array_equal(written, expected), image_id
        with Image.open(out / f"{image_id}.png") as image:
            assert image.mode == "P"
    assert not np.array_equal(voc_masks[G[2]], sbd_masks[G[2]])  # VOC's mask won where both exist
    assert (maskstore.read_png(out / f"{G[0]}.png") == 255).any()  # VOC's 255 boundaries kept
    data = json.loads((out / "manifest.json").read_text())
    assert data["stage"] == "ground_truth" and data["counts"]["files"] == len(wanted) and not data["failures"]

    work = tmp_path / "work"
    cams = clipes("cams", "--dataset", "voc12", "--data-root", voc, "--split", split, "--clip", CLIP, "--work", work,
                  "--no-progress")
    assert cams.returncode == 0 and f"{len(expected_aug)} done" in cams.stdout, cams.stderr
    scored = clipes("eval", "--work", work, "--split", split)
    assert scored.returncode == 0, scored.stdout + scored.stderr
    report = json.loads((work / "eval.json").read_text())
    assert report["ground_truth"] == str(out.resolve())
    assert "cams" in scored.stdout


def test_missing_parts_are_one_line_each(tmp_path):
    voc, sbd, _, _ = build_tree(tmp_path)
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    (sbd / "train.txt").unlink()
    result = clipes("prepare-voc", "--voc", voc, "--sbd", sbd, "--no-progress")
    assert result.returncode == 2
    missing = [line for line in result.stdout.splitlines() if line.startswith("missing ")]
    assert len(missing) == 2
    assert any("val.txt: VOC's segmentation val ids" in line for line in missing)
    assert any("train.txt: SBD's train ids" in line for line in missing)
    assert result.stderr.strip() == "error: 2 part(s) of the dataset tree missing (listed above)"
    assert not (voc / "SegmentationClassAug").exists()


def test_a_voc_folder_one_level_too_high_and_voc_alone(tmp_path):
    voc, _, _, _ = build_tree(tmp_path / "VOCdevkit")
    high = clipes("prepare-voc", "--voc", tmp_path / "VOCdevkit", "--no-progress")
    assert high.returncode == 2 and f"but {voc} has: give VOC={voc}" in high.stderr
    alone = clipes("prepare-voc", "--voc", voc, "--no-progress")
    assert alone.returncode == 0, alone.stderr
    assert "VOC train 4 and val 2 ids, 6 SegmentationClass masks" in alone.stdout
    assert "give SBD=" in alone.stdout and not (voc / "SegmentationClassAug").exists()


@pytest.mark.parametrize("values,message", [(np.full((4, 4), 30, np.uint8), "outside 0..20 and 255")])
def test_sbd_values_out_of_range_are_refused(tmp_path, values, message):
    from clipes.data.prepare_voc import read_sbd_mat
    from clipes.errors import InputError

    savemat(tmp_path / "x.mat", {"GTcls": {"Segmentation": values}})
    with pytest.raises(InputError, match=message):
        read_sbd_mat(tmp_path / "x.mat")
    savemat(tmp_path / "y.mat", {"other": np.zeros(2)})
    with pytest.raises(InputError, match="cannot read SBD segmentation"):
        read_sbd_mat(tmp_path / "y.mat")
