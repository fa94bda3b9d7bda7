"""``predict-weclip`` and ``masks-weclip`` as library calls (no mmseg needed).

* :func:`run_predict`: multi-scale + flip decoder logits (no CAMs), then the dense CRF of spec 12
  (on by default), written as palette PNGs to a ``predictions`` folder (maskstore's format).
* :func:`run_masks`: the online RFM + PAR pseudo label of each image at its own size, as the
  reference's validation computes it (long side 512, late phase), written to ``<OUT>/masks``, which
  ``make eval`` scores and ``make train-seg`` trains on.

Both are resumable (an image is done when its PNG exists in a folder of the same identity: the
same checkpoint, CLIP and options), write atomically, refuse a folder another stage or setting
made unless ``force``, and report a bad image as one ``failed <id>:`` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clipes.backbones.clip_loader import load_clip
from clipes.data.datasets import IMAGE_EXTENSIONS, find_image, open_dataset, read_split
from clipes.data.images import load_image
from clipes.errors import InputError, UserError
from clipes.maps.crf import CrfParams, dense_crf
from clipes.runs import RunSummary, resolve_device, run_mask_loop
from clipes.store import manifest, maskstore
from clipes.store.fsutil import file_sha256
from clipes.weclip.checkpoint import read_decoder_state
from clipes.weclip.decoder import WeCLIPDecoder, decoder_config
from clipes.weclip.model import WeCLIP, build_weclip, long_side_size
from clipes.weclip.options import ModelOptions, prompt_lists
from clipes.weclip.tower import normalize_image

# spec 12: DenseCRF on the plain RGB image, Gaussian 3/3, bilateral 64/5/4, 10 iterations.
PREDICT_CRF = CrfParams(iterations=10, gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=64.0,
                        bilateral_srgb=5.0, bilateral_compat=4.0, color="rgb", fp16_probs=False)
LONG_SIDE = 512
SCALES = (1.0, 0.75)


@dataclass
class InferOptions:
    """Options of ``predict-weclip`` / ``masks-weclip``.

    Attributes:
        checkpoint: a clipes or reference WeCLIP checkpoint.
        clip: CLIP checkpoint [the one the clipes checkpoint names].
        model: model options given on the command line, ``{field: value}`` of
            :class:`~clipes.weclip.options.ModelOptions`: each overrides only itself; the rest are
            those the clipes checkpoint records (reference files: the defaults of its class count).
        images: image folder (predict) ; data_root / split / labels_file / images_dir: the dataset
            (masks; predict takes SPLIT to restrict the images).
        work / out: ``predict``: OUT [WORK/predictions]; ``masks``: OUT/masks [WORK/masks].
        crf: predict only: the dense CRF [on].
        jobs: predict only: CRF worker processes [1 on CPU, where the forward uses the cores; up to 8
            on a GPU].
        long_side / scales / flip: predict only: test-time resize and augmentation [512, (1, 0.75), on].
        device: cpu or cuda.
        force: recompute into a folder made another way.
    """

    checkpoint: Path | None = None
    clip: str | None = None
    model: dict = field(default_factory=dict)
    images: Path | None = None
    data_root: Path | None = None
    split: Path | None = None
    labels_file: Path | None = None
    images_dir: str | None = None
    work: Path | None = None
    out: Path | None = None
    crf: bool = True
    jobs: int | None = None
    long_side: int = LONG_SIDE
    scales: tuple[float, ...] = SCALES
    flip: bool = True
    device: str = "cpu"
    force: bool = False
    progress: bool = True


@dataclass
class LoadedWeCLIP:
    model: WeCLIP
    classes: list[str]
    options: ModelOptions
    identity: dict = field(default_factory=dict)
    backbones: dict = field(default_factory=dict)  # {"clip": ...}: what output manifests and the report name


def recorded_options(meta: dict, num_classes: int, given: dict, options=ModelOptions,
                     derived: tuple[str, ...] = ("late_blocks", "box_threshold"), method: str = "WeCLIP"):
    """The model options of a checkpoint, each field the user gave overriding only itself.

    A clipes checkpoint records its (resolved) options; a reference checkpoint gets the defaults of
    the dataset its class count implies. A given ``dataset`` also re-derives the dataset-dependent
    defaults (``derived``) the user did not give.

    Args:
        meta: the checkpoint's record. num_classes: its class count (with background).
        given: ``{field: value}`` from the command line.
        options: the method's options dataclass (with ``resolved()``).
    """
    known = options.__dataclass_fields__
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UserError(f"unknown {method} model option(s): {', '.join(unknown)}")
    if meta.get("model"):
        base = {k: v for k, v in meta["model"].items() if k in known}
    else:
        base = {"dataset": {21: "voc12", 81: "coco14"}.get(num_classes, "custom")}
    if "dataset" in given and given["dataset"] != base.get("dataset"):
        for name in derived:
            base.pop(name, None)
    return options(**{**base, **given}).resolved()


def load_weclip(opts: InferOptions, echo: Callable[[str], None] = print) -> LoadedWeCLIP:
    """The model of a checkpoint on the given CLIP, after the checks of issue 18 (one line each).

    Raises:
        UserError: no checkpoint, not a WeCLIP checkpoint, no CLIP, a CLIP that does not fit the
            decoder, or a class count that differs from the dataset's.
    """
    if opts.checkpoint is None:
        raise UserError("give CHECKPOINT: a WeCLIP checkpoint (clipes' iter_N.pth or the reference's .pth)")
    state, meta, kind = read_decoder_state(opts.checkpoint)
    config = decoder_config(state)
    model_opts = recorded_options(meta, config["num_classes"], dict(opts.model or {}))
    classes, background = prompt_lists(model_opts)
    if len(classes.names) + 1 != config["num_classes"]:
        raise UserError(f"{opts.checkpoint} predicts {config['num_classes']} classes (with background); "
                        f"{model_opts.dataset} has {len(classes.names) + 1}")
    clip_source = opts.clip or meta.get("clip")
    if not clip_source:
        raise UserError(f"give CLIP: {opts.checkpoint} is a reference checkpoint and names no CLIP")
    loaded = load_clip(str(clip_source))
    width, layers = loaded.config["vision_width"], loaded.config["vision_layers"]
    if width != config["clip_width"] or layers - 1 != config["branches"]:
        raise UserError(f"{loaded.path}: a CLIP of width {width} with {layers} blocks; {opts.checkpoint} was "
                        f"trained on width {config['clip_width']} with {config['branches'] + 1} blocks")
    if meta.get("clip_sha256") and meta["clip_sha256"] != loaded.sha256:
        echo(f"warning: {loaded.path} is not the CLIP {opts.checkpoint} was trained with "
             f"(sha256 {loaded.sha256[:12]} vs {meta['clip_sha256'][:12]})")
    decoder = WeCLIPDecoder(**{**config, "fp16_out_proj": model_opts.fp16_out_proj})
    decoder.load_state_dict(state)
    device = resolve_device(opts.device)
    model = build_weclip(loaded.model, list(classes.prompts), background, model_opts.template, decoder,
                         late_blocks=model_opts.late_blocks, box_threshold=model_opts.box_threshold,
                         grad_method=model_opts.grad_method, fp16_out_proj=model_opts.fp16_out_proj)
    model = model.to(device).eval()
    identity = {"checkpoint": file_sha256(Path(opts.checkpoint).expanduser()), "checkpoint_kind": kind,
                "clip_sha256": loaded.sha256, "model": model_opts.plain()}
    return LoadedWeCLIP(model, list(classes.names), model_opts, identity, {"clip": str(loaded.path)})


def _image_tensor(path: Path, device) -> tuple[np.ndarray, torch.Tensor]:
    image, _ = load_image(path)
    rgb = np.asarray(image.convert("RGB"))
    return rgb, normalize_image(rgb).to(device)  # uint8: float64 arithmetic, as the reference's test loader


def _check_size(rgb: np.ndarray, long_side: int, scales, path: Path, patch: int = 16) -> None:
    h, w = rgb.shape[:2]
    short = min(h, w) * long_side / max(h, w) * min(scales)
    if short < patch:
        raise InputError(f"image {path} is {w}x{h}: resized to long side {long_side} its short side is below one "
                         f"{patch}-pixel patch")


def image_logits(model: WeCLIP, rgb: np.ndarray, image: torch.Tensor, opts: InferOptions) -> torch.Tensor:
    """Multi-scale + flip logits ``[K+1, H, W]`` of one image at its own size."""
    h0, w0 = rgb.shape[:2]
    logits = model.predict_logits(image, opts.long_side, tuple(opts.scales), opts.flip)
    return F.interpolate(logits, size=(h0, w0), mode="bilinear", align_corners=False)[0]


def crf_label(rgb: np.ndarray, probs: np.ndarray, params: CrfParams = PREDICT_CRF) -> np.ndarray:
    """Argmax of the spec's dense CRF (``params``: another method's) on the plain RGB image: ``[H, W]`` uint8."""
    return dense_crf(np.array(rgb, dtype=np.uint8, order="C"), probs, params).argmax(axis=0).astype(np.uint8)


def predict_image(model: WeCLIP, rgb: np.ndarray, image: torch.Tensor, opts: InferOptions) -> np.ndarray:
    """Label map ``[H, W]`` uint8 of one image (multi-scale + flip, optional CRF)."""
    logits = image_logits(model, rgb, image, opts)
    if not opts.crf:
        return logits.argmax(dim=0).cpu().numpy().astype(np.uint8)
    return crf_label(rgb, torch.softmax(logits, dim=0).cpu().numpy())


def mask_image(model: WeCLIP, rgb: np.ndarray, image: torch.Tensor, classes: list[int], long_side: int = LONG_SIDE
               ) -> np.ndarray:
    """The online pseudo label of one image at its own size (late phase, long side ``long_side``)."""
    h0, w0 = rgb.shape[:2]
    resized = F.interpolate(image, size=long_side_size(h0, w0, long_side), mode="bilinear", align_corners=False)
    with torch.no_grad():
        step = model.step(resized, [classes], True, label_sizes=[(h0, w0)])
    return step.images[0].label.cpu().numpy().astype(np.uint8)


def prediction_paths(opts, echo: Callable[[str], None]) -> tuple[Path, list, dict, Path]:
    """``(image folder, [(id, path)], failures, output folder)`` of a ``predict-*`` command, checked
    before any model is loaded."""
    images = Path(opts.images or (Path(opts.data_root) / "JPEGImages" if opts.data_root else "")).expanduser()
    if not opts.images and not opts.data_root:
        raise UserError("give IMAGES: the folder of images to predict")
    if not images.is_dir():
        raise UserError(f"image folder not found: {images}")
    if opts.out is None and opts.work is None:
        raise UserError("give OUT (or WORK: predictions go to WORK/predictions)")
    folder = Path(opts.out or Path(opts.work) / maskstore.PREDICTIONS_STAGE).expanduser()
    failures = {}
    if opts.split is not None:
        paths = []
        for image_id, _ in read_split(Path(opts.split).expanduser()):
            try:
                paths.append((image_id, find_image(images, image_id)))
            except InputError as exc:
                failures[image_id] = str(exc)
                echo(f"failed {image_id}: {exc}")
    else:
        paths = sorted((p.stem, p) for p in images.iterdir()
                       if p.suffix in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not paths and not failures:
        raise UserError(f"no images in {images}")
    return images, paths, failures, folder


def predict_images(loaded, opts, echo: Callable[[str], None], name: str, method: str, images: Path, paths: list,
                   failures: dict, folder: Path, crf_params: CrfParams = PREDICT_CRF, square: bool = False
                   ) -> RunSummary:
    """The loop of a ``predict-*`` command: multi-scale + flip logits of ``loaded.model``
    (``predict_logits``), then the CRF (``crf_params``) in ``opts.jobs`` processes, palette PNGs in
    ``folder``. ``square``: the model resizes every image to a square (no size check needed)."""
    device = next(loaded.model.decoder.parameters()).device
    header = {"command": manifest.command_line(), "method": method,
              "input": {"checkpoint": str(opts.checkpoint), "images": str(images)},
              "backbones": loaded.backbones, "classes": loaded.classes, "format": maskstore.MASKS_FORMAT,
              "options": {"crf": opts.crf, "long_side": opts.long_side, "scales": list(opts.scales), "flip": opts.flip}}
    identity = {**loaded.identity, **header["options"]}
    jobs = opts.jobs or (min(8, os.cpu_count() or 1) if device.type == "cuda" else 1)

    def one(image_id, path):
        rgb, image = _image_tensor(path, device)
        if not square:
            _check_size(rgb, opts.long_side, opts.scales, path)
        logits = image_logits(loaded.model, rgb, image, opts)
        if not opts.crf:
            return logits.argmax(dim=0).cpu().numpy().astype(np.uint8)
        return rgb, torch.softmax(logits, dim=0).cpu().numpy()

    def finish(out):
        todo = [i for i, o in enumerate(out) if not isinstance(o, InputError)]
        if jobs > 1 and len(todo) > 1:
            from joblib import Parallel, delayed

            labels = Parallel(n_jobs=min(jobs, len(todo)))(delayed(crf_label)(*out[i], crf_params) for i in todo)
        else:
            labels = [crf_label(*out[i], crf_params) for i in todo]
        for i, label in zip(todo, labels):
            out[i] = label
        return out

    return run_mask_loop(paths, folder, maskstore.PREDICTIONS_STAGE, header, identity, opts, one, echo, name,
                         chunk=2 * jobs if opts.crf and jobs > 1 else 1, finish=finish if opts.crf else None,
                         failures=failures)


def run_predict(opts: InferOptions, echo: Callable[[str], None] = print) -> RunSummary:
    """Predictions of a trained WeCLIP for a folder of images (or the ids of SPLIT)."""
    images, paths, failures, folder = prediction_paths(opts, echo)
    loaded = load_weclip(opts, echo)
    return predict_images(loaded, opts, echo, "predict-weclip", "weclip", images, paths, failures, folder)


def masks_of_split(loaded, opts, echo: Callable[[str], None], name: str, method: str, mask, order: str,
                   options: dict | None = None, square: bool = False) -> RunSummary:
    """The loop of a ``masks-*`` command: ``mask(rgb, image, classes)`` of every image of the split
    at its own size into ``<OUT>/masks`` (OUT defaults to WORK).

    Args:
        order: the classes of an image as ``ascending`` or in the label ``source``'s order (VOC: XML).
        options: what the manifest records as the run's options [WeCLIP's: long side, late phase].
        square: the model resizes every image to a square (no size check needed).
    """
    if opts.data_root is None or opts.split is None:
        raise UserError("give DATA_ROOT and SPLIT: the images and their image-level labels")
    if opts.out is None and opts.work is None:
        raise UserError("give WORK (masks go to WORK/masks) or OUT")
    classes, _ = prompt_lists(loaded.options)
    dataset = open_dataset(loaded.options.dataset, opts.data_root, opts.split, classes, opts.labels_file,
                           opts.images_dir)
    if not dataset.ids:
        raise UserError(f"{opts.split} lists no images")
    out = Path(opts.out or opts.work).expanduser()
    folder = out / maskstore.MASKS_STAGE
    device = next(loaded.model.decoder.parameters()).device
    header = {"command": manifest.command_line(), "method": method,
              "input": {"checkpoint": str(opts.checkpoint), "dataset": loaded.options.dataset,
                        "data_root": str(Path(opts.data_root).expanduser().resolve()),
                        "images": str(dataset.image_dir.resolve())},
              "backbones": loaded.backbones, "classes": loaded.classes, "format": {**maskstore.MASKS_FORMAT,
                                                    "values": "0 background, c+1 class c; no ignore value"},
              "options": options or {"long_side": opts.long_side, "phase": "late"}}
    identity = {**loaded.identity, **header["options"]}

    def one(image_id):
        path = dataset.image_path(image_id)
        labels = list(dataset.labels(image_id))
        rgb, image = _image_tensor(path, device)
        if not square:
            _check_size(rgb, opts.long_side, (1.0,), path)
        return mask(rgb, image, sorted(labels) if order == "ascending" else labels)

    return run_mask_loop([(i,) for i in dataset.ids], folder, maskstore.MASKS_STAGE, header, identity, opts, one, echo,
                         name)


def run_masks(opts: InferOptions, echo: Callable[[str], None] = print) -> RunSummary:
    """WeCLIP pseudo masks of a dataset split into ``<OUT>/masks`` (OUT defaults to WORK)."""
    if opts.data_root is None or opts.split is None:
        raise UserError("give DATA_ROOT and SPLIT: the images and their image-level labels")
    if opts.out is None and opts.work is None:
        raise UserError("give WORK (masks go to WORK/masks) or OUT")
    loaded = load_weclip(opts, echo)
    return masks_of_split(loaded, opts, echo, "masks-weclip", "weclip",
                          lambda rgb, image, classes: mask_image(loaded.model, rgb, image, classes, opts.long_side),
                          "ascending")
