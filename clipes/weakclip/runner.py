"""``masks-weakclip`` as a library call: the reference's pseudo masks from a trained WeakCLIP.

Each image of the split: the 12 test views (6 ratios x flip, spec 13.1), slide-window logits, the
softmax of each at the image's size averaged, then the dataset's inference CRF on the classes that
win the argmax somewhere (``--no-crf``: the argmax). Written in maskstore's format to
``<OUT>/masks`` (OUT defaults to ``WORK/methods/weakclip``, never over the seeds) with a manifest,
so ``make eval`` scores them and ``make train-seg WORK=<OUT>`` trains on them. Resumable: a mask is
done when its file exists in a folder made with the same checkpoint, CLIP and options (the
reference silently reuses old probability files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from clipes.data.datasets import find_image, read_split
from clipes.data.segdata import dataset_paths, stage_info
from clipes.errors import InputError, UserError
from clipes.maps.crf import read_crf_image
from clipes.runs import RunSummary, resolve_device, run_mask_loop
from clipes.store import manifest, maskstore
from clipes.store.fsutil import file_sha256, ids_in
from clipes.weakclip import classes as label_spaces
from clipes.weakclip import inference
from clipes.weakclip.options import MasksOptions

METHOD = "weakclip"


def _plain_rgb(path: Path, bgr: np.ndarray) -> np.ndarray:
    """The CRF's colour image: PIL's RGB decode as tools/make_crf.py reads it (cv2's if sizes differ)."""
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except Exception:
        rgb = None
    return rgb if rgb is not None and rgb.shape[:2] == bgr.shape[:2] else np.ascontiguousarray(bgr[:, :, ::-1])


def run_masks(opts: MasksOptions, load_model: Callable, echo: Callable[[str], None] = print) -> RunSummary:
    """WeakCLIP pseudo masks of a split into ``<OUT>/masks``.

    Args:
        opts: the command's options.
        load_model: ``(checkpoint, clip, config, device, echo) -> (model, cfg, meta)``, the model
            in eval mode (the mmseg wing's :func:`clipes.mmseg_ext.weakclip.load_model`; this
            package never imports the wing).
        echo: where the lines go.

    Raises:
        UserError: no checkpoint, nothing to say where the images are, an empty split, an output
            folder that is the seeds' own.
    """
    if opts.checkpoint is None:
        raise UserError("give CHECKPOINT: a WeakCLIP checkpoint (clipes' iter_N.pth or a released .pth)")
    if opts.work is None and opts.out is None:
        raise UserError("give WORK (masks go to WORK/methods/weakclip/masks) or OUT")
    work = Path(opts.work).expanduser() if opts.work else None
    seeds = work / maskstore.MASKS_STAGE if work else None
    recorded = stage_info(seeds)
    out = Path(opts.out or work / maskstore.METHODS_DIR / METHOD).expanduser()
    folder = out / maskstore.MASKS_STAGE
    if seeds is not None and folder.resolve() == seeds.resolve():
        raise UserError(f"{folder} holds the seeds WeakCLIP trained on; give another OUT")
    if opts.split is not None:
        ids = [image_id for image_id, _ in read_split(Path(opts.split).expanduser())]
    elif seeds is not None and seeds.is_dir():
        ids = sorted(ids_in(seeds, ".png"))
    else:
        raise UserError("give SPLIT (the ids to make masks for) or a WORK with masks/")
    if not ids:
        raise UserError(f"no images to make masks for ({opts.split or seeds} is empty)")
    dataset, data_root, image_dir = dataset_paths(recorded, opts.dataset, opts.data_root, opts.images_dir)
    device = resolve_device(opts.device)
    model, cfg, info = load_model(Path(opts.checkpoint), opts.clip, opts.config, str(device), echo)
    settings = dict(cfg.get("masks") or {})
    scale = tuple(opts.img_scale or settings.get("img_scale", inference.IMG_SCALE))
    ratios = tuple(opts.ratios or settings.get("ratios", inference.RATIOS))
    flip = settings.get("flip", True) if opts.flip is None else opts.flip
    crf_name = settings.get("crf", "coco" if model.label_space.startswith("coco") else "voc")
    params = {"voc": inference.VOC_CRF, "coco": inference.COCO_CRF}[crf_name] if opts.crf else None
    crop, stride = int(model.test_cfg.get("crop_size", 512)), int(model.test_cfg.get("stride", 341))
    lut = label_spaces.output_lut(model.label_space, model.num_classes)
    classes = info.get("seed_classes") or recorded.get("classes") or (
        list(label_spaces.COCO81[1:]) if model.label_space == "coco91" else list(model.class_names[1:]))
    values = "0 background, c+1 class c" + ("; 255 where a COCO id clipes does not use wins" if lut is not None else
                                            "; no ignore value")
    header = {"command": manifest.command_line(), "method": METHOD,
              "input": {"checkpoint": str(opts.checkpoint), "dataset": dataset,
                        "data_root": str(data_root.resolve()), "images": str(image_dir.resolve())},
              "classes": list(classes), "format": {**maskstore.MASKS_FORMAT, "values": values},
              "options": {"img_scale": list(scale), "ratios": list(ratios), "flip": bool(flip),
                          "crf": crf_name if opts.crf else None, "crop": crop, "stride": stride}}
    identity = {"checkpoint": file_sha256(Path(opts.checkpoint).expanduser()), "clip_sha256": model.clip_sha256,
                **header["options"]}
    smallest = min(ratios)

    def one(image_id):
        path = find_image(image_dir, image_id)
        bgr = np.ascontiguousarray(read_crf_image(path, "rgb")[:, :, ::-1])
        h, w = inference.view_size(*bgr.shape[:2], scale, smallest)
        if min(h, w) < model.backbone.patch:
            raise InputError(f"image {path} is {bgr.shape[1]}x{bgr.shape[0]}: its smallest view ({w}x{h}) is below "
                             f"one {model.backbone.patch}-pixel patch")
        mean = inference.average_softmax(model.encode_decode, bgr, model.num_classes, crop, stride, scale, ratios,
                                         flip, device).cpu().numpy()
        rgb = _plain_rgb(path, bgr) if params is not None else bgr[:, :, ::-1]  # decoded again only for the CRF
        label = inference.crf_mask(rgb, mean, params)
        return lut[label] if lut is not None else label

    return run_mask_loop([(i,) for i in ids], folder, maskstore.MASKS_STAGE, header, identity, opts, one, echo,
                         "masks-weakclip")
