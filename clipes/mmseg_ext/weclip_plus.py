"""WeCLIP+ training through mmengine's Runner (the mmengine-aware half of :mod:`clipes.weclip_plus`).

Registered when :mod:`clipes.mmseg_ext` is imported:

* ``WeCLIPPlusModel``: an mmengine ``BaseModel`` whose only registered (trainable, saved) module is
  the decoder (both heads and the shared decoder); the frozen CLIP, the frozen DINOv2 and the text
  features are held outside the module tree, so checkpoints never contain either backbone and DDP
  only synchronises the decoder.

WeCLIP's ``WeCLIPTrainSet`` (with ordered labels), ``WeCLIPPolyWarmupLR`` and ``WeCLIPPhaseHook`` (the
iteration, for the pseudo-label override) and the shared ``MethodMetaHook`` (the CLIP's and DINO's
sha256, classes and options in ``meta["weclipplus"]``) do the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from mmengine.model import BaseModel
from mmseg.registry import MODELS

from clipes.backbones.clip_loader import load_clip
from clipes.backbones.dinov2 import load_dino
from clipes.errors import UserError
from clipes.mmseg_ext.weclip import decoder_run_config
from clipes.weclip.data import batch_classes, write_samples
from clipes.weclip.options import prompt_lists, training_samples
from clipes.weclip_plus.decoder import WeCLIPPlusDecoder
from clipes.weclip_plus.model import build_weclip_plus
from clipes.weclip_plus.options import STAGE, ModelOptions, TrainOptions


@MODELS.register_module()
class WeCLIPPlusModel(BaseModel):
    """WeCLIP+ for mmengine: ``forward(mode="loss")`` is one training step of spec 3-9.

    Args:
        clip: CLIP checkpoint. dino: DINOv2 weights.
        model: :class:`ModelOptions` fields.
        override_after: the pseudo label is overridden when the 0-based iteration exceeds this.
        aff_weight, cross_weight, dice_weight: loss weights.
    """

    def __init__(self, clip: str, dino: str, model: dict, override_after: int, aff_weight: float = 0.1,
                 cross_weight: float = 0.1, dice_weight: float = 1.0, data_preprocessor=None):
        super().__init__(data_preprocessor=data_preprocessor)
        opts = ModelOptions(**model).resolved()
        loaded = load_clip(clip)
        dino_model = load_dino(dino).model
        classes, background = prompt_lists(opts)
        self.decoder = WeCLIPPlusDecoder(loaded.config["vision_width"], dino_model.width, opts.width,
                                         len(classes.names) + 1, opts.layers, fp16_out_proj=opts.fp16_out_proj)
        plus = build_weclip_plus(loaded.model, dino_model, list(classes.prompts), background, opts.template,
                                 self.decoder, **opts.model_kwargs())
        self._frozen = [plus]  # a list: outside the module tree (not saved, not wrapped by DDP)
        self.override_after = int(override_after)
        self.weights = dict(aff_weight=float(aff_weight), cross_weight=float(cross_weight),
                            dice_weight=float(dice_weight))
        self.iteration = 0  # 0-based, set by WeCLIPPhaseHook

    @property
    def plus(self):
        plus = self._frozen[0]
        device = next(self.decoder.parameters()).device
        if plus.logit_scale.device != device:
            plus.to(device)  # the decoder is shared, already there
        return plus

    def forward(self, inputs: torch.Tensor, data_samples: torch.Tensor | None = None, mode: str = "tensor"):
        plus = self.plus
        plus.train(self.training)
        if mode == "loss":
            step = plus.step(inputs, batch_classes(data_samples, ordered=True))
            losses = plus.losses(step, override=self.iteration > self.override_after, **self.weights)
            return {"loss_seg": losses.seg, "loss_aff": self.weights["aff_weight"] * losses.aff,
                    "loss_dice": self.weights["dice_weight"] * losses.dice,
                    "loss_cross": self.weights["cross_weight"] * (losses.clip_from_dino + losses.dino_from_clip)}
        return plus.segment(inputs)


def train_config(opts: TrainOptions, echo: Callable[[str], None] = print):
    """The mmengine config of a WeCLIP+ run, after every check; writes only the sample list and manifest."""
    from clipes.backbones.clip_loader import architecture, check_clip_state_dict, read_state_dict, resolve_checkpoint
    from clipes.backbones.dinov2 import config_dict
    from clipes.mmseg_ext.runner import begin_training, launch_and_resume
    from clipes.store import manifest
    from clipes.store.fsutil import file_sha256

    if opts.clip is None:
        raise UserError("give CLIP: a CLIP ViT checkpoint (OpenAI .pt, .safetensors or a Hugging Face folder)")
    if opts.dino is None:
        raise UserError("give DINO: DINOv2 weights (the hub's dinov2_vits14_pretrain.pth, a .safetensors file "
                        "or a Hugging Face Dinov2 folder; see docs/weclipplus.md)")
    if opts.work is None and opts.out is None:
        raise UserError(f"give WORK (checkpoints go to WORK/{STAGE}) or OUT")
    model_opts = opts.model.resolved()
    clip_path = resolve_checkpoint(opts.clip)
    state = read_state_dict(clip_path)
    check_clip_state_dict(state, clip_path)  # one line for a ResNet CLIP or another model
    arch = architecture(state)
    del state
    if arch["vision_layers"] < model_opts.late_blocks + model_opts.cam_block:
        raise UserError(f"{clip_path}: a CLIP with {arch['vision_layers']} blocks; WeCLIP+ takes the last "
                        f"{model_opts.late_blocks} attention maps and runs its GradCAM on block "
                        f"{arch['vision_layers'] - model_opts.cam_block}")
    dino = load_dino(opts.dino)  # one line for a CLIP given as DINO, another patch size, missing tensors
    order = "ascending" if model_opts.dataset == "coco14" else "source"  # VOC: the XML's order (spec 2)
    samples, failures = training_samples(opts, echo, order=order)
    classes, _ = prompt_lists(model_opts)
    out = Path(opts.out or Path(opts.work) / STAGE).expanduser()
    iters, batch = opts.resolved_iters(), opts.resolved_batch()
    decoder = {"clip_width": arch["vision_width"], "dino_width": dino.config.embed_dim, "width": model_opts.width,
               "num_classes": len(classes.names) + 1, "layers": model_opts.layers}
    info = {"clip": str(clip_path), "clip_sha256": file_sha256(clip_path), "dino": str(dino.path),
            "dino_sha256": dino.sha256, "dino_config": config_dict(dino.config), "classes": list(classes.names),
            "model": model_opts.plain(), "decoder": decoder}
    training = {"iters": iters, "batch_size": batch, "crop": opts.crop, "lr": opts.lr,
                "override_after": opts.resolved_override(), "seed": opts.seed,
                "weights": [opts.aff_weight, opts.cross_weight, opts.dice_weight]}
    header = {"command": manifest.command_line(), "input": {"data_root": str(opts.data_root),
                                                           "split": str(opts.split), "clip": str(clip_path),
                                                           "dino": str(dino.path)},
              **info, "training": training}
    identity = manifest.identity_of({k: header[k] for k in ("clip_sha256", "dino_sha256", "classes", "model",
                                                            "training")})
    begin_training(out, STAGE, header, identity, failures, echo)
    samples_file = write_samples(out / "train_samples.json", samples)
    cfg = decoder_run_config(
        model=dict(type="WeCLIPPlusModel", clip=str(clip_path), dino=str(dino.path), model=model_opts.plain(),
                   override_after=opts.resolved_override(), aff_weight=opts.aff_weight,
                   cross_weight=opts.cross_weight, dice_weight=opts.dice_weight),
        dataset=dict(type="WeCLIPTrainSet", samples=str(samples_file), num_classes=len(classes.names), crop=opts.crop,
                     ordered=True),
        opts=opts, iters=iters, warmup=opts.warmup_iters, batch_size=batch, stage=STAGE, info=info,
        command="train-weclipplus", out=out)
    launch_and_resume(cfg, out, opts.launcher, opts.resume, "train-weclipplus", echo)
    cfg.merge_from_dict(opts.options)
    skipped = f", {len(failures)} skipped" if failures else ""
    echo(f"train-weclipplus: {len(samples)} images{skipped}, {len(classes.names)} classes, {iters} iterations "
         f"(pseudo-label override after {opts.resolved_override()}), DINO {dino.config.hub_name()}, output {out}")
    return cfg


def run_train(opts: TrainOptions, echo: Callable[[str], None] = print) -> Path:
    """Train WeCLIP+'s decoder; returns the output folder (checkpoints, logs, manifest)."""
    from clipes.mmseg_ext.runner import train_and_record

    return train_and_record(train_config(opts, echo), "train-weclipplus", opts.verbose, echo)
