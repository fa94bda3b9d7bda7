"""``clipes refine``, ``clipes eval`` and the .npy interop end to end, in subprocesses."""

import json
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from clipes.store import camstore, maskstore
from clipes.store.interop import read_clipes_npy

from conftest import GOLDEN, GOLDEN_IDS
from helpers import assert_one_line_each, cams_args, clipes, clipes_on_a_full_disk, run_and_kill


def refine_args(work, *extra):
    return ["refine", "--work", work, "--no-progress", *extra]


def load_masks(folder):
    return {i: maskstore.read_png(maskstore.png_path(folder, i)) for i in sorted(maskstore.done_ids(folder))}


@pytest.fixture(scope="module")
def refined_run(tmp_path_factory):
    """cams with the attention cache, then refine recomputing attention (the default without a cache)."""
    work = tmp_path_factory.mktemp("refined_run")
    result = clipes(*cams_args(GOLDEN, GOLDEN / "split.txt", work, "--save-affinity"))
    assert result.returncode == 0, result.stderr
    result = clipes(*refine_args(work, "--attention", "recompute"))
    assert result.returncode == 0, result.stderr
    return work, result


def test_refined_maps_and_masks_match_reference(refined_run):
    work, result = refined_run
    assert "refine: 12 done, 0 already done, 0 failed" in result.stdout
    labels = agree = total = 0
    for image_id in GOLDEN_IDS:
        reference = np.load(GOLDEN / "ref_cams" / f"{image_id}.npy", allow_pickle=True).item()  # our own fixture
        refined = camstore.read_cam_file(camstore.cam_path(work / "refined", image_id))
        assert refined.keys.tolist() == reference["keys"].tolist()
        diff = np.abs(refined.cams - reference["attn_highres"].astype(np.float32)).max(axis=(1, 2))
        assert (diff <= 2e-3).all(), (image_id, diff)
        labels += len(diff)
        mask = maskstore.read_png(maskstore.png_path(work / "masks", image_id))
        expected = cv2.imread(str(GOLDEN / "ref_pseudo_masks" / f"{image_id}.png"), cv2.IMREAD_UNCHANGED)
        agree += int((mask == expected).sum())
        total += mask.size
        confidence = maskstore.read_png(maskstore.png_path(work / "confidence", image_id))
        assert confidence.shape == mask.shape and ((confidence < 0.95 * 255 - 1) <= (mask == 255)).all()
        label = maskstore.read_png(maskstore.png_path(work / "labels", image_id))
        kept = mask != 255
        assert (label != 255).all() and (label[kept] == mask[kept]).all() and (~kept).any()
    assert labels == 18 and agree / total >= 0.999


def test_manifests_link_to_the_cams(refined_run):
    work, _ = refined_run
    cams = json.loads((work / "cams" / "manifest.json").read_text())
    for stage in ("refined", "masks", "confidence", "labels"):
        data = json.loads((work / stage / "manifest.json").read_text())
        assert data["stage"] == stage and data["input"]["cams_identity"] == cams["identity"]
        assert data["counts"] == {"files": 12, "failed": 0} and data["options"]["box_threshold"] == 0.4
    assert json.loads((work / "masks" / "manifest.json").read_text())["runs"][-1]["attention"]["recomputed"] == 12


def test_attention_cache_gives_the_same_result_and_needs_no_clip(refined_run, tmp_path):
    work, _ = refined_run
    shutil.copytree(work / "cams", tmp_path / "cams")
    shutil.copytree(work / "attention", tmp_path / "attention")
    result = clipes(*refine_args(tmp_path, "--attention", "cache", "--clip", tmp_path / "no-such-clip.pt"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "masks" / "manifest.json").read_text())["runs"][-1]["attention"]["cache"] == 12
    for image_id in GOLDEN_IDS:
        cached = camstore.read_cam_file(camstore.cam_path(tmp_path / "refined", image_id)).cams
        fresh = camstore.read_cam_file(camstore.cam_path(work / "refined", image_id)).cams
        assert np.abs(cached - fresh).max() <= 1e-3
    cached_masks, fresh_masks = load_masks(tmp_path / "masks"), load_masks(work / "masks")
    agree = sum(int((cached_masks[i] == fresh_masks[i]).sum()) for i in GOLDEN_IDS)
    assert agree / sum(m.size for m in fresh_masks.values()) >= 0.9999
    size = sum(p.stat().st_size for p in (work / "attention").glob("*.npz"))
    tokens = sum(int(np.prod(camstore.read_cam_file(camstore.cam_path(work / "cams", i)).cams.shape[1:])) ** 2
                 for i in GOLDEN_IDS)
    assert 2 * tokens <= size <= 2 * tokens + 12 * 1024  # float16 N x N plus small headers


def test_parallel_crf_equals_serial_and_rerun_skips(refined_run, tmp_path):
    work, _ = refined_run
    shutil.copytree(work / "cams", tmp_path / "cams")
    result = clipes(*refine_args(tmp_path, "--jobs", "2", "--attention", "recompute"))
    assert result.returncode == 0, result.stderr
    serial, parallel = load_masks(work / "masks"), load_masks(tmp_path / "masks")
    assert sorted(parallel) == GOLDEN_IDS
    for image_id in GOLDEN_IDS:
        np.testing.assert_array_equal(parallel[image_id], serial[image_id])
    again = clipes(*refine_args(tmp_path, "--jobs", "2", "--attention", "recompute"))
    assert again.returncode == 0 and "0 done, 12 already done, 0 failed" in again.stdout


def test_other_options_need_another_out_or_force(refined_run, tmp_path):
    work, _ = refined_run
    result = clipes(*refine_args(work, "--crf-iterations", "5"))
    assert result.returncode == 2 and "made with other settings" in result.stderr
    out = tmp_path / "no-crf"
    result = clipes(*refine_args(work, "--out", out, "--no-crf", "--confidence", "0", "--split",
                                 GOLDEN / "split.txt"))
    assert result.returncode == 0, result.stderr
    mask = maskstore.read_png(maskstore.png_path(out / "masks", GOLDEN_IDS[0]))
    assert 255 not in mask and set(np.unique(mask)) <= {0, 3, 5}  # background, bird, bottle


def test_kill_and_resume_gives_the_same_masks(refined_run, tmp_path):
    work, _ = refined_run
    shutil.copytree(work / "cams", tmp_path / "cams")
    run_and_kill(refine_args(tmp_path), tmp_path / "masks", "*.png")
    partial = maskstore.done_ids(tmp_path / "masks")
    assert 3 <= len(partial) < 12, "the run ended before it could be killed mid-way"
    result = clipes(*refine_args(tmp_path))
    assert result.returncode == 0, result.stderr
    resumed, reference = load_masks(tmp_path / "masks"), load_masks(work / "masks")
    assert sorted(resumed) == sorted(reference) == GOLDEN_IDS
    for image_id in GOLDEN_IDS:
        np.testing.assert_array_equal(resumed[image_id], reference[image_id])
    for stage in ("refined", "masks", "confidence", "labels"):
        assert not [p for p in (tmp_path / stage).iterdir() if p.name.startswith(".")]


def test_bad_inputs_are_reported_and_skipped(refined_run, tmp_path):
    work, _ = refined_run
    data = tmp_path / "data"
    shutil.copytree(GOLDEN / "JPEGImages", data / "JPEGImages")
    shutil.copytree(work / "cams", tmp_path / "cams")
    ids = GOLDEN_IDS[:6]
    (tmp_path / "cams" / f"{ids[0]}.npz").write_bytes(b"garbage")
    (tmp_path / "cams" / f"{ids[1]}.npz").unlink()
    Image.new("RGB", (40, 30)).save(data / "JPEGImages" / f"{ids[2]}.jpg")
    (data / "JPEGImages" / f"{ids[3]}.jpg").unlink()
    split = tmp_path / "split.txt"
    split.write_text("\n".join(ids) + "\n")
    result = clipes(*refine_args(tmp_path, "--data-root", data, "--split", split))
    assert result.returncode == 1
    reasons = {ids[0]: "cannot read cams file", ids[1]: "cams file not found",
               ids[2]: "is 40x30 but its cams were made for", ids[3]: "image not found"}
    assert_one_line_each(result, reasons)
    assert "2 done, 0 already done, 4 failed" in result.stdout
    assert maskstore.done_ids(tmp_path / "masks") == set(ids[4:])
    failures = json.loads((tmp_path / "masks" / "manifest.json").read_text())["failures"]
    assert sorted(failures) == sorted(reasons)


def test_another_clip_or_dataset_is_refused(refined_run, tmp_path, tiny_checkpoint):
    work, _ = refined_run
    shutil.copytree(work / "cams", tmp_path / "cams")
    result = clipes(*refine_args(tmp_path, "--dataset", "coco14"))
    assert result.returncode == 2 and "made for DATASET=voc12" in result.stderr
    result = clipes(*refine_args(tmp_path, "--clip", tiny_checkpoint, "--attention", "recompute"))
    assert result.returncode == 2 and "not the checkpoint that made the cams" in result.stderr
    assert "Traceback" not in result.stderr
    result = clipes(*refine_args(tmp_path / "empty"))
    assert result.returncode == 2 and "no cams folder" in result.stderr


def test_eval_reports_every_stage(refined_run, tmp_path):
    work, _ = refined_run
    out = tmp_path / "eval.json"
    result = clipes("eval", "--work", work, "--split", GOLDEN / "split.txt", "--json", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert set(report["stages"]) == {"cams", "refined", "masks", "labels"} and report["images"] == 12
    # the CRF argmax, scored before the confidence rule, covers every pixel
    assert report["stages"]["labels"]["coverage"] == pytest.approx(1.0)
    assert report["baseline"]["class"] == "background" and 0 < report["baseline"]["miou"] < 1
    assert report["stages"]["cams"]["best_alpha"] in range(1, 11) and len(report["stages"]["cams"]["sweep"]) == 10
    assert set(report["stages"]["refined"]["sweep"]) == {"1", "2"}
    masks = report["stages"]["masks"]
    # the background class is always present; leaving 255 out can only raise its recall
    assert masks["without_ignored"]["recall"][0] >= masks["with_ignored"]["recall"][0] > 0
    assert "per class IoU / precision / recall" in result.stdout and "background" in result.stdout


def test_npy_interop_roundtrip_and_pickle_flag(refined_run, tmp_path):
    work, _ = refined_run
    result = clipes("export-npy", "--work", work, "--out", tmp_path / "npy")
    assert result.returncode == 0, result.stderr
    keys, maps = read_clipes_npy(tmp_path / "npy" / f"{GOLDEN_IDS[0]}.npy", allow_pickle=True)
    stored = camstore.read_cam_file(camstore.cam_path(work / "refined", GOLDEN_IDS[0]))
    assert keys.tolist() == stored.keys.tolist() and np.array_equal(maps, stored.cams)
    refused = clipes("import-npy", "--npy-dir", GOLDEN / "ref_cams", "--work", tmp_path / "w", "--dataset", "voc12")
    assert refused.returncode == 2 and "--allow-pickle" in refused.stderr and not (tmp_path / "w" / "refined").exists()
    result = clipes("import-npy", "--npy-dir", GOLDEN / "ref_cams", "--work", tmp_path / "w", "--dataset", "voc12",
                    "--allow-pickle")
    assert result.returncode == 0 and "12 imported" in result.stdout
    imported = camstore.read_cam_file(camstore.cam_path(tmp_path / "w" / "refined", "2001_000005"))
    assert imported.keys.tolist() == [13, 16, 11] and imported.image_size == (152, 201)


def test_a_failed_write_stops_the_run_and_keeps_what_was_written(refined_run, tmp_path, monkeypatch):
    from clipes.clip_es.refine_runner import RefineOptions, run_refine

    work, _ = refined_run
    for stage in ("cams", "attention"):
        shutil.copytree(work / stage, tmp_path / stage)
    clean = tmp_path / "clean"
    run_refine(RefineOptions(work=tmp_path, out=clean, crf=False, progress=False), echo=lambda line: None)
    real, calls = maskstore.write_confidence, []

    def fail_third(path, confidence):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(path, confidence)

    monkeypatch.setattr(maskstore, "write_confidence", fail_third)
    with pytest.raises(OSError, match="No space left"):
        run_refine(RefineOptions(work=tmp_path, crf=False, progress=False), echo=lambda line: None)
    written = maskstore.done_ids(tmp_path / "masks")
    assert 2 <= len(written) < len(GOLDEN_IDS)  # the writes handed over before the failure were finished
    for stage in ("refined", "masks", "confidence", "labels"):
        assert not [p for p in (tmp_path / stage).iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(maskstore, "write_confidence", real)
    run_refine(RefineOptions(work=tmp_path, crf=False, progress=False), echo=lambda line: None)
    resumed, expected = load_masks(tmp_path / "masks"), load_masks(clean / "masks")
    assert sorted(resumed) == sorted(expected) == GOLDEN_IDS
    for image_id in GOLDEN_IDS:
        np.testing.assert_array_equal(resumed[image_id], expected[image_id])


def test_a_full_disk_through_the_background_writer_is_one_line_and_a_rerun_completes(refined_run, tmp_path):
    work, _ = refined_run
    out = tmp_path / "out"
    args = refine_args(work, "--out", out, "--no-crf")
    result = clipes_on_a_full_disk(out, ".png", 4, *args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and errors[0].startswith("error: no space left on device writing " + str(out))
    assert not list(out.rglob(".*.tmp-*"))  # no temporary left
    result = clipes(*args)  # space again: the rerun completes what the full disk stopped
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == sorted(p.name for p in (work / "masks").glob("*.png"))
