"""``predict-excel``, ``masks-excel`` and ``cams-excel`` as library calls (no mmseg needed).

* :func:`run_predict`: the decoder's multi-scale + flip logits (spec 12: the image resized to
  320 x 320, scales 0.7, 1, 1.2, 1.5, scale 1 unflipped), then the dense CRF of ExCEL's script
  (1/3, 67/3/4; on by default), into a ``predictions`` folder. No CAM, so no attribute bank.
* :func:`run_masks`: the trained model's pseudo labels (``infer_lam.py --training_free false``: the
  dynamic CAM of the image and its flip, the decoder-guided refinement, PAR) at each image's size,
  into ``<OUT>/masks`` for ``make eval`` and ``make train-seg``.
* :func:`run_cams`: no training at all: the training-free CAMs (one forward, no backward) into
  ``<WORK>/cams`` in CLIP-ES's format (resized to the image's patch grid, so ``make refine`` takes
  them) and the training-free labels (mean attention, boxes, PAR) into ``<OUT>/masks``.

All resume (an image is done when its files exist in a folder of the same identity), write
atomically, refuse a folder another stage or setting made unless ``force``, and report a bad image
as one ``failed <id>:`` line. WeCLIP's command loops (:mod:`clipes.weclip.runner`) run the first two.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clipes.backbones.clip_loader import load_clip
from clipes.data.datasets import open_dataset
from clipes.data.images import load_image
from clipes.errors import InputError, UserError
from clipes.excel import attributes
from clipes.excel.checkpoint import read_decoder_state
from clipes.excel.decoder import decoder_config, excel_decoder
from clipes.excel.model import SCALES, SIZE, ExCEL, build_excel
from clipes.excel.options import STAGE, ModelOptions
from clipes.maps.crf import CrfParams
from clipes.runs import RunSummary, progress_bar, resolve_device
from clipes.store import camstore, manifest, maskstore
from clipes.store.fsutil import file_sha256, remove_stale_temporaries
from clipes.weclip.options import prompt_lists
from clipes.weclip.runner import InferOptions as WeCLIPInferOptions
from clipes.weclip.runner import crf_label as weclip_crf_label
from clipes.weclip.runner import masks_of_split, predict_images, prediction_paths, recorded_options
from clipes.weclip.tower import normalize_image

# spec 12: ExCEL's DenseCRF: 10 iterations, Gaussian 1/3, bilateral 67/3/4, on the RGB image.
PREDICT_CRF = CrfParams(iterations=10, gaussian_sxy=1.0, gaussian_compat=3.0, bilateral_sxy=67.0,
                        bilateral_srgb=3.0, bilateral_compat=4.0, color="rgb", fp16_probs=False)
DERIVED = ("box_threshold", "clusters")  # re-derived when another dataset is given


def crf_label(rgb: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Argmax of ExCEL's dense CRF on the RGB image: ``[H, W]`` uint8."""
    return weclip_crf_label(rgb, probs, PREDICT_CRF)


@dataclass
class InferOptions(WeCLIPInferOptions):
    """Options of ``predict-excel`` / ``masks-excel``: WeCLIP's, with ExCEL's test-time resize.

    Attributes:
        long_side: the square side every image is resized to [320] (``--size``).
        scales: test scales [(0.7, 1, 1.2, 1.5)].
        model: given model options; ``attributes`` (masks only) defaults to the bank the clipes
            checkpoint was trained with.
    """

    long_side: int = SIZE
    scales: tuple[float, ...] = SCALES


@dataclass
class LoadedExCEL:
    model: ExCEL
    classes: list[str]
    options: ModelOptions
    identity: dict = field(default_factory=dict)
    backbones: dict = field(default_factory=dict)  # {"clip": ..., "attributes": ...}


def _bank(model_opts: ModelOptions, loaded_clip, classes, cache_dir: Path | None, echo) -> tuple[torch.Tensor, dict]:
    return attributes.resolve_bank(model_opts.attributes, loaded_clip.model, loaded_clip.sha256, list(classes.names),
                                   model_opts.clusters, cache_dir, echo)


def load_excel(opts: InferOptions, echo: Callable[[str], None] = print, text: bool = False,
               cache_dir: Path | None = None) -> LoadedExCEL:
    """The model of a checkpoint on the given CLIP (and, with ``text``, the attribute bank), after the
    checks (one line each).

    Raises:
        UserError: no checkpoint, not an ExCEL checkpoint, no CLIP, a CLIP that does not fit the
            decoder, a class count that differs from the dataset's, or (``text``) a bad bank.
    """
    if opts.checkpoint is None:
        raise UserError("give CHECKPOINT: an ExCEL checkpoint (clipes' iter_N.pth or the reference's .pth)")
    state, meta, kind = read_decoder_state(opts.checkpoint)
    config = decoder_config(state)
    model_opts = recorded_options(meta, config["num_classes"], dict(opts.model or {}), ModelOptions, DERIVED, "ExCEL")
    classes, background = prompt_lists(model_opts)
    if len(classes.names) + 1 != config["num_classes"]:
        raise UserError(f"{opts.checkpoint} predicts {config['num_classes']} classes (with background); "
                        f"{model_opts.dataset} has {len(classes.names) + 1}")
    clip_source = opts.clip or meta.get("clip")
    if not clip_source:
        raise UserError(f"give CLIP: {opts.checkpoint} is a reference checkpoint and names no CLIP")
    loaded = load_clip(str(clip_source))
    width, layers = loaded.config["vision_width"], loaded.config["vision_layers"]
    if width != config["clip_width"] or layers != config["branches"]:
        hint = " (a WeCLIP decoder? ExCEL fuses every block)" if config["branches"] == layers - 1 else ""
        raise UserError(f"{loaded.path}: a CLIP of width {width} with {layers} blocks; {opts.checkpoint} fuses "
                        f"{config['branches']} blocks of width {config['clip_width']}{hint}")
    if meta.get("clip_sha256") and meta["clip_sha256"] != loaded.sha256:
        echo(f"warning: {loaded.path} is not the CLIP {opts.checkpoint} was trained with "
             f"(sha256 {loaded.sha256[:12]} vs {meta['clip_sha256'][:12]})")
    centres, bank = None, {}
    if text:
        centres, bank = _bank(model_opts, loaded, classes, cache_dir, echo)
        trained = meta.get("attributes") or {}
        for key in ("bank_sha256", "descriptors_sha256"):
            if trained.get(key) and bank.get(key) and trained[key] != bank[key]:
                echo(f"warning: {model_opts.attributes} is not the attribute file {opts.checkpoint} was trained with")
    decoder = excel_decoder(**config)
    decoder.load_state_dict(state)
    device = resolve_device(opts.device)
    model = build_excel(loaded.model, list(classes.prompts), background, model_opts.template, centres, decoder,
                        model_opts.top_k, mode="val", **model_opts.model_kwargs())
    model = model.to(device).eval()
    identity = {"checkpoint": file_sha256(Path(opts.checkpoint).expanduser()), "checkpoint_kind": kind,
                "clip_sha256": loaded.sha256, "model": model_opts.plain(),
                "attributes": {k: v for k, v in bank.items() if k.endswith("sha256") or k == "clusters"}}
    backbones = {"clip": str(loaded.path), **({"attributes": str(model_opts.attributes)} if text else {})}
    return LoadedExCEL(model, list(classes.names), model_opts, identity, backbones)


def run_predict(opts: InferOptions, echo: Callable[[str], None] = print) -> RunSummary:
    """Predictions of a trained ExCEL for a folder of images (or the ids of SPLIT)."""
    images, paths, failures, folder = prediction_paths(opts, echo)
    loaded = load_excel(opts, echo)
    return predict_images(loaded, opts, echo, "predict-excel", STAGE, images, paths, failures, folder,
                          crf_params=PREDICT_CRF, square=True)


def mask_image(model: ExCEL, rgb: np.ndarray, image: torch.Tensor, classes: list[int], size: int = SIZE
               ) -> np.ndarray:
    """The trained model's pseudo label of one image at its own size."""
    _, out = model.optimized(image, classes, rgb.shape[:2], size)
    return out.label.cpu().numpy().astype(np.uint8)


def run_masks(opts: InferOptions, echo: Callable[[str], None] = print) -> RunSummary:
    """ExCEL pseudo masks of a dataset split into ``<OUT>/masks`` (OUT defaults to WORK)."""
    if opts.data_root is None or opts.split is None:
        raise UserError("give DATA_ROOT and SPLIT: the images and their image-level labels")
    if opts.out is None and opts.work is None:
        raise UserError("give WORK (masks go to WORK/masks) or OUT")
    loaded = load_excel(opts, echo, text=True, cache_dir=Path(opts.work or opts.out).expanduser())
    return masks_of_split(loaded, opts, echo, "masks-excel", STAGE,
                          lambda rgb, image, classes: mask_image(loaded.model, rgb, image, classes, opts.long_side),
                          "ascending", options={"size": opts.long_side, "labels": "trained (dynamic CAM, guided)"},
                          square=True)


@dataclass
class CamOptions:
    """Options of ``cams-excel``: training-free CAMs and labels of a split.

    Attributes:
        data_root / split / labels_file / images_dir: the dataset (as ``clipes cams``).
        clip: CLIP checkpoint.
        work: CAMs go to ``WORK/cams`` (CLIP-ES's format); out: labels go to ``OUT/masks`` [WORK].
        model: :class:`ModelOptions` (dataset, prompts, ATTRIBUTES, refinement).
        size: the square side images are resized to [320].
        labels: also write the training-free labels [on].
        device, force, progress: as ``clipes cams``.
    """

    data_root: Path | None = None
    split: Path | None = None
    clip: str | None = None
    work: Path | None = None
    out: Path | None = None
    model: ModelOptions = field(default_factory=ModelOptions)
    labels_file: Path | None = None
    images_dir: str | None = None
    size: int = SIZE
    labels: bool = True
    device: str = "cpu"
    force: bool = False
    progress: bool = True


def patch_grid_cams(cams: torch.Tensor, image_size: tuple[int, int], patch: int = 16) -> np.ndarray:
    """``[K, s, s]`` CAMs of the square-resized image -> ``[K, ceil(H/16), ceil(W/16)]`` (bilinear),
    the grid CLIP-ES's cams files and ``refine`` use."""
    h, w = image_size
    grid = (-(-h // patch), -(-w // patch))
    out = F.interpolate(cams[None].float(), size=grid, mode="bilinear", align_corners=False)[0]
    return out.clamp(0, 1).cpu().numpy().astype(np.float32)


def run_cams(opts: CamOptions, echo: Callable[[str], None] = print) -> RunSummary:
    """Training-free ExCEL CAMs (and labels) of a split (see the module docstring).

    Raises:
        UserError: a wrong dataset, split, CLIP or attribute file; nothing is computed then.
    """
    start = time.time()
    if opts.data_root is None or opts.split is None:
        raise UserError("give DATA_ROOT and SPLIT: the images and their image-level labels")
    if opts.work is None:
        raise UserError("give WORK: the CAMs go to WORK/cams (and the labels to WORK/masks, or OUT/masks)")
    model_opts = opts.model.resolved()
    classes, background = prompt_lists(model_opts)
    dataset = open_dataset(model_opts.dataset, Path(opts.data_root), Path(opts.split), classes, opts.labels_file,
                           opts.images_dir)
    if not dataset.ids:
        raise UserError(f"{opts.split} lists no images")
    if opts.clip is None:
        raise UserError("give CLIP: a CLIP ViT checkpoint (OpenAI .pt, .safetensors or a Hugging Face folder)")
    device = resolve_device(opts.device)
    loaded = load_clip(opts.clip, device)
    work = Path(opts.work).expanduser()
    centres, bank = _bank(model_opts, loaded, classes, work, echo)
    if loaded.config["vision_layers"] < model_opts.attn_layers:
        raise UserError(f"{loaded.path}: a CLIP with {loaded.config['vision_layers']} blocks; the refinement takes "
                        f"the last {model_opts.attn_layers} attention maps")
    model = build_excel(loaded.model, list(classes.prompts), background, model_opts.template, centres, None,
                        model_opts.top_k, mode="val", **model_opts.model_kwargs()).to(device).eval()
    cams_folder = work / camstore.STAGE
    masks_folder = Path(opts.out or work).expanduser() / maskstore.MASKS_STAGE
    record = {"size": opts.size, "model": model_opts.plain(), "attributes": bank, "clip_sha256": loaded.sha256}
    identity = manifest.identity_of({"stage": camstore.STAGE, "method": STAGE, "dataset": model_opts.dataset,
                                     "classes": list(classes.names), "size": opts.size,
                                     "model": {k: v for k, v in model_opts.plain().items() if k != "attributes"},
                                     "attributes": {k: v for k, v in bank.items()
                                                    if k.endswith("sha256") or k == "clusters"},
                                     "clip_sha256": loaded.sha256})
    data_root = str(Path(opts.data_root).expanduser().resolve())
    header = {"command": manifest.command_line(), "method": STAGE,
              "dataset": {"name": model_opts.dataset, "data_root": data_root,
                          "split": str(Path(opts.split).resolve()), "images": len(dataset.ids)},
              "classes": list(classes.names),
              "clip": {"source": str(opts.clip), "path": str(loaded.path), "sha256": loaded.sha256, **loaded.config},
              "options": {"images_dir": opts.images_dir, "excel": record,
                          "grid": f"the {opts.size // 16} x {opts.size // 16} CAM of the {opts.size} x {opts.size} "
                                  f"resize, bilinear to the image's patch grid"},
              "format": {**camstore.FORMAT, "cams": "float32 [K, h, w]: ExCEL's training-free patch-text CAM "
                                                    "(min-max over the tokens), row i for keys[i]"}}
    folders = [cams_folder] + ([masks_folder] if opts.labels else [])
    mask_header = {"command": header["command"], "method": STAGE,
                   "input": {"dataset": model_opts.dataset, "data_root": data_root,
                             "images": str(dataset.image_dir.resolve())},
                   "backbones": {"clip": str(loaded.path), "attributes": str(model_opts.attributes)},
                   "classes": list(classes.names),
                   "format": {**maskstore.MASKS_FORMAT, "values": "0 background, c+1 class c; no ignore value"},
                   "options": {"size": opts.size, "labels": "training-free"}}
    begun = []
    summary = RunSummary(folder=cams_folder, stage="cams-excel")
    succeeded: set[str] = set()
    bar, error = None, None
    try:
        for folder, stage, head in ((cams_folder, camstore.STAGE, header), (masks_folder, maskstore.MASKS_STAGE,
                                                                             mask_header))[:len(folders)]:
            manifest.begin_run(folder, stage, head, identity, force=opts.force, echo=echo)
            begun.append(folder)
            remove_stale_temporaries(folder, older_than_s=0)
        done = set() if opts.force else camstore.done_ids(cams_folder)
        if opts.labels and not opts.force:
            done &= maskstore.done_ids(masks_folder)
        todo = [i for i in dataset.ids if i not in done]
        summary.already_done = len(dataset.ids) - len(todo)
        succeeded.update(set(dataset.ids) - set(todo))
        bar = progress_bar(len(todo), opts.progress and bool(todo), "cams-excel")
        for image_id in todo:
            try:
                labels = sorted(dataset.labels(image_id))
                if not labels:
                    raise InputError("no class label: nothing to localise")
                image, _ = load_image(dataset.image_path(image_id))
                rgb = np.asarray(image.convert("RGB"))
                tensor = normalize_image(rgb).to(device)
                _, _, out = model.training_free(tensor, labels, rgb.shape[:2], opts.size)
            except InputError as exc:
                summary.failures[image_id] = str(exc)
                bar.write(f"failed {image_id}: {exc}")
                bar.update(1)
                continue
            camstore.write_cam_file(camstore.cam_path(cams_folder, image_id), labels,
                                    patch_grid_cams(out.cams, rgb.shape[:2]), rgb.shape[:2])
            if opts.labels:
                maskstore.write_mask(maskstore.png_path(masks_folder, image_id),
                                     out.label.cpu().numpy().astype(np.uint8))
            succeeded.add(image_id)
            summary.done += 1
            bar.update(1)
    except BaseException as exc:
        error = exc
        raise
    finally:
        if bar is not None:
            bar.close()
        summary.failed = len(summary.failures)
        summary.seconds = time.time() - start
        run = {"finished": manifest.now(), "device": str(device), "done": summary.done,
               "already_done": summary.already_done, "failed": summary.failed, "seconds": round(summary.seconds, 2)}
        for folder in begun:
            count = (camstore.done_ids if folder == cams_folder else maskstore.done_ids)(folder)
            try:
                manifest.end_run(folder, run, succeeded, summary.failures, {}, len(count))
            except Exception:
                if error is None:
                    raise
    echo(summary.line())
    return summary

