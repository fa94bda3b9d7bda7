"""ExCEL training through mmengine's Runner (the mmengine-aware half of :mod:`clipes.excel`).

Registered when :mod:`clipes.mmseg_ext` is imported:

* ``ExCELModel``: an mmengine ``BaseModel`` whose only registered (trainable, saved) module is the
  decoder (fusion head + decoder transformer); the surgery CLIP and the enriched text are held
  outside the module tree, so checkpoints never contain the CLIP and DDP only synchronises the decoder.
* ``ExCELTrainSet``: :class:`clipes.excel.data.TrainSet` (the mask-steered VOC crop).

WeCLIP's ``WeCLIPPolyWarmupLR`` and ``WeCLIPPhaseHook`` (the iteration, for the phases) and the shared
``MethodMetaHook`` (the CLIP's sha256, the attribute file, classes and options in ``meta["excel"]``)
do the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from mmengine.model import BaseModel
from mmseg.registry import DATASETS, MODELS

from clipes.backbones.clip_loader import load_clip
from clipes.errors import UserError
from clipes.excel import attributes
from clipes.excel.data import CROP_RULES, TrainSet
from clipes.excel.decoder import excel_decoder
from clipes.excel.model import build_excel
from clipes.excel.options import STAGE, ModelOptions, TrainOptions
from clipes.mmseg_ext.weclip import decoder_run_config
from clipes.weclip.data import batch_classes, write_samples
from clipes.weclip.options import prompt_lists, training_samples

DATASETS.register_module(name="ExCELTrainSet", module=TrainSet)


@MODELS.register_module()
class ExCELModel(BaseModel):
    """ExCEL for mmengine: ``forward(mode="loss")`` is one training step of spec 3-10.

    Args:
        clip: CLIP checkpoint.
        bank: the attribute bank file (``.pth`` or the ``.npz`` train-excel cached).
        model: :class:`ModelOptions` fields.
        crop: the training crop (the positional table's grid).
        dynamic_from: first 0-based iteration of the dynamic CAM and the guided refinement.
        self_affinity_from: first 0-based iteration whose affinity labels are the prediction's (None: never).
        aff_weight: weight of the affinity loss.
    """

    def __init__(self, clip: str, bank: str, model: dict, crop: int, dynamic_from: int,
                 self_affinity_from: int | None = None, aff_weight: float = 0.1, data_preprocessor=None):
        super().__init__(data_preprocessor=data_preprocessor)
        opts = ModelOptions(**model).resolved()
        loaded = load_clip(clip)
        classes, background = prompt_lists(opts)
        centres, _ = attributes.read_bank(Path(bank))
        cfg = loaded.config
        self.decoder = excel_decoder(cfg["vision_width"], cfg["vision_layers"], opts.width, len(classes.names) + 1,
                                     opts.layers)
        excel = build_excel(loaded.model, list(classes.prompts), background, opts.template, centres, self.decoder,
                            opts.top_k, mode="train", crop=int(crop), **opts.model_kwargs())
        self._frozen = [excel]  # a list: outside the module tree (not saved, not wrapped by DDP)
        self.dynamic_from = int(dynamic_from)
        self.self_affinity_from = None if self_affinity_from is None else int(self_affinity_from)
        self.aff_weight = float(aff_weight)
        self.iteration = 0  # 0-based, set by WeCLIPPhaseHook

    @property
    def excel(self):
        excel = self._frozen[0]
        device = next(self.decoder.parameters()).device
        if excel.text.device != device:
            excel.to(device)  # the decoder is shared, already there
        return excel

    def forward(self, inputs: torch.Tensor, data_samples: torch.Tensor | None = None, mode: str = "tensor"):
        excel = self.excel
        excel.train(self.training)
        if mode == "loss":
            dynamic = self.iteration >= self.dynamic_from
            late = self.self_affinity_from is not None and self.iteration >= self.self_affinity_from
            step = excel.step(inputs, batch_classes(data_samples), dynamic)
            losses = excel.losses(step, late, self.aff_weight)
            return {"loss_seg": losses.seg, "loss_aff": self.aff_weight * losses.aff}
        return excel.segment(inputs)


def _crop_masks(opts: TrainOptions, rule: str) -> Path | None:
    """The ground-truth folder the mask-steered crop reads, or None for the first window."""
    from clipes.data.datasets import ground_truth_dir

    if rule not in CROP_RULES:
        raise UserError(f"crop rule must be one of {', '.join(CROP_RULES)}, not {rule!r}")
    if rule == "first":
        return None
    folder = Path(opts.masks_dir).expanduser() if opts.masks_dir else ground_truth_dir(opts.data_root,
                                                                                      opts.model.dataset)
    if folder is None or not folder.is_dir():
        raise UserError(f"ExCEL's VOC crop is chosen with the ground-truth masks (the reference's quirk) and "
                        f"{folder or Path(opts.data_root) / 'SegmentationClassAug'} is missing: give MASKS_DIR, or "
                        f"CROP_RULE=first to train without any pixel label")
    return folder


def train_config(opts: TrainOptions, echo: Callable[[str], None] = print):
    """The mmengine config of an ExCEL run, after every check; writes only the bank cache, the sample
    list and the manifest."""
    from clipes.backbones.clip_loader import architecture, check_clip_state_dict, read_state_dict, resolve_checkpoint
    from clipes.mmseg_ext.runner import begin_training, launch_and_resume
    from clipes.store import manifest
    from clipes.store.fsutil import file_sha256

    if opts.clip is None:
        raise UserError("give CLIP: a CLIP ViT checkpoint (OpenAI .pt, .safetensors or a Hugging Face folder)")
    if opts.work is None and opts.out is None:
        raise UserError(f"give WORK (checkpoints go to WORK/{STAGE}) or OUT")
    model_opts = opts.model.resolved()
    if model_opts.attributes is None:
        raise UserError(attributes.NO_ATTRIBUTES)
    if opts.crop % 16:
        raise UserError(f"CROP={opts.crop} is not a multiple of the 16-pixel patch")
    clip_path = resolve_checkpoint(opts.clip)
    state = read_state_dict(clip_path)
    check_clip_state_dict(state, clip_path)  # one line for a ResNet CLIP or another model
    arch = architecture(state)
    del state
    if arch["vision_layers"] < max(model_opts.attn_layers, 6):
        raise UserError(f"{clip_path}: a CLIP with {arch['vision_layers']} blocks; ExCEL runs its surgery on the "
                        f"last 5 and refines with the last {model_opts.attn_layers} attention maps")
    rule = opts.resolved_crop_rule()
    masks = _crop_masks(opts, rule)
    samples, failures = training_samples(opts, echo, order="ascending")
    if masks is not None:
        kept = []
        for sample in samples:
            if (masks / f"{sample.image_id}.png").is_file():
                kept.append(sample)
            else:
                failures[sample.image_id] = f"no ground-truth mask {masks / (sample.image_id + '.png')} for the crop"
                echo(f"failed {sample.image_id}: {failures[sample.image_id]}")
        if not kept:
            raise UserError(f"none of the training images has a mask in {masks} (CROP_RULE=first needs none)")
        samples = kept
    classes, _ = prompt_lists(model_opts)
    out = Path(opts.out or Path(opts.work) / STAGE).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_clip(str(clip_path))
    _, bank = attributes.resolve_bank(model_opts.attributes, loaded.model, loaded.sha256, list(classes.names),
                                      model_opts.clusters, out, echo)
    bank_file = out / attributes.BANK_CACHE if bank["kind"] == "descriptors" else Path(bank["bank"])
    del loaded
    iters = opts.resolved_iters()
    info = {"clip": str(clip_path), "clip_sha256": file_sha256(clip_path), "classes": list(classes.names),
            "attributes": bank, "model": model_opts.plain(),
            "decoder": {"clip_width": arch["vision_width"], "branches": arch["vision_layers"],
                        "width": model_opts.width, "num_classes": len(classes.names) + 1}}
    training = {"iters": iters, "batch_size": opts.batch_size, "crop": opts.crop, "lr": opts.lr,
                "warmup_iters": opts.resolved_warmup(), "dynamic_from": opts.resolved_dynamic(),
                "self_affinity_from": opts.resolved_self_affinity(), "crop_rule": rule, "seed": opts.seed}
    header = {"command": manifest.command_line(), "input": {"data_root": str(opts.data_root), "split": str(opts.split),
                                                           "clip": str(clip_path)}, **info, "training": training}
    identity = manifest.identity_of({"clip_sha256": info["clip_sha256"], "classes": info["classes"],
                                     "model": {k: v for k, v in info["model"].items() if k != "attributes"},
                                     "attributes": {k: v for k, v in bank.items() if k.endswith("sha256")},
                                     "training": training})
    begin_training(out, STAGE, header, identity, failures, echo)
    samples_file = write_samples(out / "train_samples.json", samples)
    cfg = decoder_run_config(
        model=dict(type="ExCELModel", clip=str(clip_path), bank=str(bank_file), model=model_opts.plain(),
                   crop=opts.crop, dynamic_from=opts.resolved_dynamic(),
                   self_affinity_from=opts.resolved_self_affinity(), aff_weight=opts.aff_weight),
        dataset=dict(type="ExCELTrainSet", samples=str(samples_file), num_classes=len(classes.names),
                     masks=None if masks is None else str(masks), crop=opts.crop),
        opts=opts, iters=iters, warmup=opts.resolved_warmup(), batch_size=opts.batch_size, stage=STAGE, info=info,
        command="train-excel", out=out)
    launch_and_resume(cfg, out, opts.launcher, opts.resume, "train-excel", echo)
    cfg.merge_from_dict(opts.options)
    skipped = f", {len(failures)} skipped" if failures else ""
    late = opts.resolved_self_affinity()
    echo(f"train-excel: {len(samples)} images{skipped}, {len(classes.names)} classes, {iters} iterations "
         f"(dynamic CAM from {opts.resolved_dynamic()}" + (f", self affinity from {late}" if late is not None else "")
         + f"), crop {rule}, attributes {bank.get('kind')} K={bank.get('clusters')}, output {out}")
    return cfg


def run_train(opts: TrainOptions, echo: Callable[[str], None] = print) -> Path:
    """Train ExCEL's decoder; returns the output folder (checkpoints, logs, manifest)."""
    from clipes.mmseg_ext.runner import train_and_record

    return train_and_record(train_config(opts, echo), "train-excel", opts.verbose, echo)
