"""``predict-weclipplus`` and ``masks-weclipplus`` as library calls (no mmseg needed).

WeCLIP's command loops (:mod:`clipes.weclip.runner`) run them; what differs is the model:

* :func:`run_predict`: long side 512, scales 1 and 1.5, flip, the logits of both branches averaged
  0.5 / 0.5, then the dense CRF of the reference's VOC test script (on by default; no CAM work);
* :func:`run_masks`: the online RFM+ + PAR pseudo label of each image at its own size, as the
  reference's validation computes it (VOC: the labels in the XML's order), into ``<OUT>/masks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.dinov2 import load_dino
from clipes.errors import UserError
from clipes.runs import RunSummary, resolve_device
from clipes.store.fsutil import file_sha256
from clipes.weclip.model import long_side_size
from clipes.weclip.options import prompt_lists
from clipes.weclip.runner import (  # noqa: F401  spec 12: WeCLIP's DenseCRF
    PREDICT_CRF,
    crf_label,
    masks_of_split,
    predict_images,
    prediction_paths,
    recorded_options,
)
from clipes.weclip.runner import InferOptions as WeCLIPInferOptions
from clipes.weclip_plus.checkpoint import read_decoder_state
from clipes.weclip_plus.decoder import WeCLIPPlusDecoder, decoder_config
from clipes.weclip_plus.model import WeCLIPPlus, build_weclip_plus
from clipes.weclip_plus.options import ModelOptions

SCALES = (1.0, 1.5)


@dataclass
class InferOptions(WeCLIPInferOptions):
    """Options of ``predict-weclipplus`` / ``masks-weclipplus``: WeCLIP's, plus the DINOv2.

    Attributes:
        dino: DINOv2 weights [the ones the clipes checkpoint names].
        scales: test scales [(1, 1.5)].
    """

    dino: str | None = None
    scales: tuple[float, ...] = SCALES


@dataclass
class LoadedWeCLIPPlus:
    model: WeCLIPPlus
    classes: list[str]
    options: ModelOptions
    identity: dict = field(default_factory=dict)
    backbones: dict = field(default_factory=dict)  # {"clip": ..., "dino": ...}: named in manifests and the report


def load_weclip_plus(opts: InferOptions, echo: Callable[[str], None] = print) -> LoadedWeCLIPPlus:
    """The model of a checkpoint on the given CLIP and DINOv2, after the checks (one line each).

    Raises:
        UserError: no checkpoint, not a WeCLIP+ checkpoint, no CLIP or DINO, a CLIP or DINO whose
            width differs from the checkpoint's, or a class count that differs from the dataset's.
    """
    if opts.checkpoint is None:
        raise UserError("give CHECKPOINT: a WeCLIP+ checkpoint (clipes' iter_N.pth or the reference's .pth)")
    state, meta, kind = read_decoder_state(opts.checkpoint)
    config = decoder_config(state)
    model_opts = recorded_options(meta, config["num_classes"], dict(opts.model or {}), ModelOptions,
                                  ("cam_block", "late_blocks", "boxes", "box_threshold"), "WeCLIP+")
    classes, background = prompt_lists(model_opts)
    if len(classes.names) + 1 != config["num_classes"]:
        raise UserError(f"{opts.checkpoint} predicts {config['num_classes']} classes (with background); "
                        f"{model_opts.dataset} has {len(classes.names) + 1}")
    clip_source = opts.clip or meta.get("clip")
    if not clip_source:
        raise UserError(f"give CLIP: {opts.checkpoint} is a reference checkpoint and names no CLIP")
    dino_source = opts.dino or meta.get("dino")
    if not dino_source:
        raise UserError(f"give DINO: {opts.checkpoint} is a reference checkpoint and names no DINOv2")
    loaded = load_clip(str(clip_source))
    if loaded.config["vision_width"] != config["clip_width"]:
        raise UserError(f"{loaded.path}: a CLIP of width {loaded.config['vision_width']}; {opts.checkpoint} was "
                        f"trained on width {config['clip_width']}")
    dino = load_dino(dino_source)
    if dino.config.embed_dim != config["dino_width"]:
        raise UserError(f"{dino.path}: a DINOv2 of width {dino.config.embed_dim}; {opts.checkpoint} was trained on "
                        f"width {config['dino_width']} ({'ViT-S/14' if config['dino_width'] == 384 else 'another'})")
    for what, recorded, actual, path in (("CLIP", meta.get("clip_sha256"), loaded.sha256, loaded.path),
                                         ("DINOv2", meta.get("dino_sha256"), dino.sha256, dino.path)):
        if recorded and recorded != actual:
            echo(f"warning: {path} is not the {what} {opts.checkpoint} was trained with "
                 f"(sha256 {actual[:12]} vs {recorded[:12]})")
    decoder = WeCLIPPlusDecoder(**{**config, "fp16_out_proj": model_opts.fp16_out_proj})
    decoder.load_state_dict(state)
    device = resolve_device(opts.device)
    model = build_weclip_plus(loaded.model, dino.model, list(classes.prompts), background, model_opts.template,
                              decoder, **model_opts.model_kwargs())
    model = model.to(device).eval()
    identity = {"checkpoint": file_sha256(Path(opts.checkpoint).expanduser()), "checkpoint_kind": kind,
                "clip_sha256": loaded.sha256, "dino_sha256": dino.sha256, "model": model_opts.plain()}
    return LoadedWeCLIPPlus(model, list(classes.names), model_opts, identity,
                            {"clip": str(loaded.path), "dino": dino.describe()})


def mask_image(model: WeCLIPPlus, rgb: np.ndarray, image: torch.Tensor, classes: list[int], long_side: int = 512
               ) -> np.ndarray:
    """The online pseudo label of one image at its own size (long side ``long_side``, RFM+ + PAR)."""
    h0, w0 = rgb.shape[:2]
    resized = F.interpolate(image, size=long_side_size(h0, w0, long_side), mode="bilinear", align_corners=False)
    with torch.no_grad():
        step = model.step(resized, [classes], label_sizes=[(h0, w0)])
    return step.images[0].label.cpu().numpy().astype(np.uint8)


def run_predict(opts: InferOptions, echo: Callable[[str], None] = print) -> RunSummary:
    """Predictions of a trained WeCLIP+ for a folder of images (or the ids of SPLIT)."""
    images, paths, failures, folder = prediction_paths(opts, echo)
    loaded = load_weclip_plus(opts, echo)
    return predict_images(loaded, opts, echo, "predict-weclipplus", "weclipplus", images, paths, failures, folder)


def run_masks(opts: InferOptions, echo: Callable[[str], None] = print) -> RunSummary:
    """WeCLIP+ pseudo masks of a dataset split into ``<OUT>/masks`` (OUT defaults to WORK)."""
    if opts.data_root is None or opts.split is None:
        raise UserError("give DATA_ROOT and SPLIT: the images and their image-level labels")
    if opts.out is None and opts.work is None:
        raise UserError("give WORK (masks go to WORK/masks) or OUT")
    loaded = load_weclip_plus(opts, echo)
    order = "ascending" if loaded.options.dataset == "coco14" else "source"  # VOC: the XML's order (spec 2)
    return masks_of_split(loaded, opts, echo, "masks-weclipplus", "weclipplus",
                          lambda rgb, image, classes: mask_image(loaded.model, rgb, image, classes, opts.long_side),
                          order)
