"""WeCLIP training through mmengine's Runner (the mmengine-aware half of :mod:`clipes.weclip`).

Registered in mmseg's registries when :mod:`clipes.mmseg_ext` is imported:

* ``WeCLIPModel``: an mmengine ``BaseModel`` whose only registered (trainable, saved) module is the
  decoder; the frozen CLIP and the text features are held outside the module tree, so checkpoints
  never contain the CLIP and DDP only synchronises the decoder.
* ``WeCLIPTrainSet``: :class:`clipes.weclip.data.TrainSet`.
* ``WeCLIPPolyWarmupLR``: the reference's warm-up + poly schedule (absolute-step poly).
* ``WeCLIPPhaseHook``: tells the model the iteration (RFM phase switch); the shared
  ``MethodMetaHook`` records the CLIP sha256, classes and options in every checkpoint's ``meta["weclip"]``.

:func:`run_train` builds the config from :class:`~clipes.weclip.options.TrainOptions`, checks the
inputs, and resumes an interrupted run from the output folder's last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmseg.registry import DATASETS, HOOKS, MODELS, PARAM_SCHEDULERS

from clipes.backbones.clip_loader import load_clip
from clipes.errors import UserError
from clipes.store import manifest
from clipes.weclip import rfm, schedule
from clipes.weclip.data import TrainSet, batch_classes, write_samples
from clipes.weclip.decoder import WeCLIPDecoder
from clipes.weclip.model import build_weclip
from clipes.weclip.options import ModelOptions, TrainOptions, prompt_lists, training_samples

STAGE = "weclip"
DATASETS.register_module(name="WeCLIPTrainSet", module=TrainSet)


@MODELS.register_module()
class WeCLIPModel(BaseModel):
    """WeCLIP for mmengine: ``forward(mode="loss")`` is one training step of spec 3-9.

    Args:
        clip: CLIP checkpoint (any format clipes reads).
        model: :class:`ModelOptions` fields.
        switch_iter: first 1-based iteration of the late RFM phase.
        aff_weight: weight of the affinity loss.
    """

    def __init__(self, clip: str, model: dict, switch_iter: int, aff_weight: float = 0.1, data_preprocessor=None):
        super().__init__(data_preprocessor=data_preprocessor)
        opts = ModelOptions(**model).resolved()
        loaded = load_clip(clip)
        classes, background = prompt_lists(opts)
        cfg = loaded.config
        self.decoder = WeCLIPDecoder(cfg["vision_width"], cfg["vision_layers"] - 1, opts.width,
                                     len(classes.names) + 1, opts.fp16_out_proj)
        weclip = build_weclip(loaded.model, list(classes.prompts), background, opts.template, self.decoder,
                              late_blocks=opts.late_blocks, box_threshold=opts.box_threshold,
                              grad_method=opts.grad_method, fp16_out_proj=opts.fp16_out_proj)
        self._frozen = [weclip]  # a list: outside the module tree (not saved, not wrapped by DDP)
        self.switch_iter = int(switch_iter)
        self.aff_weight = float(aff_weight)
        self.iteration = 0  # 0-based, set by WeCLIPPhaseHook

    @property
    def weclip(self):
        weclip = self._frozen[0]
        device = next(self.decoder.parameters()).device
        if weclip.logit_scale.device != device:
            weclip.to(device)  # the decoder is shared, already there
        return weclip

    def forward(self, inputs: torch.Tensor, data_samples: torch.Tensor | None = None, mode: str = "tensor"):
        weclip = self.weclip
        weclip.train(self.training)
        if mode == "loss":
            classes = batch_classes(data_samples)
            late = self.iteration + 1 >= self.switch_iter
            step = weclip.step(inputs, classes, late)
            losses = weclip.losses(step, self.aff_weight)
            return {"loss_seg": losses.seg, "loss_aff": self.aff_weight * losses.aff}
        return weclip.segment(inputs)


@PARAM_SCHEDULERS.register_module()
class WeCLIPPolyWarmupLR(_ParamScheduler):
    """``lr = base * factor(t)``: linear warm-up from ``ratio`` over ``warmup`` steps, then
    ``(1 - t / max_iters) ** power`` with the absolute step t (the reference's PolyWarmupAdamW)."""

    def __init__(self, optimizer, max_iters: int, warmup: int = schedule.WARMUP_ITERS,
                 ratio: float = schedule.WARMUP_RATIO, power: float = schedule.POWER, **kwargs):
        self.max_iters, self.warmup, self.ratio, self.power = int(max_iters), int(warmup), float(ratio), float(power)
        kwargs.setdefault("by_epoch", False)
        super().__init__(optimizer, "lr", **kwargs)

    def _get_value(self):
        factor = schedule.lr_factor(self.last_step, self.max_iters, self.warmup, self.ratio, self.power)
        return [base * factor for base in self.base_values]


@HOOKS.register_module()
class WeCLIPPhaseHook(Hook):
    """Give the model the current iteration before each step (the RFM phase depends on it)."""

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        model.iteration = runner.iter


def decoder_run_config(*, model: dict, dataset: dict, opts, iters: int, warmup: int, batch_size: int, stage: str,
                       info: dict, command: str, out: Path):
    """The mmengine config that WeCLIP, WeCLIP+ and ExCEL train their decoders with.

    An infinite shuffled sampler, AdamW at ``opts.lr`` with the reference's betas and eps, the
    reference's warm-up + poly schedule, checkpoints every ``opts.checkpoint_interval`` (at most
    2,000) without the frozen backbones, the method's meta in every checkpoint, a progress bar.

    Args:
        model: the registered model's config (its ``type`` and arguments).
        dataset: the registered training set's config.
        opts: the method's training options (``lr``, ``weight_decay``, ``jobs``, ``seed``,
            ``checkpoint_interval``, ``verbose``, ``progress``).
        iters: iterations of the run.
        warmup: warm-up iterations.
        batch_size: images per iteration per process.
        stage: the method's key in checkpoint meta (its work-folder name).
        info: what checkpoints record of the run (backbones' hashes, classes, decoder shape).
        command: the command's name, for the progress bar.
        out: the run's folder.
    """
    from mmengine.config import Config

    interval = opts.checkpoint_interval or min(2000, iters)
    return Config(dict(
        default_scope="mmseg",
        model=model,
        train_dataloader=dict(
            batch_size=batch_size, num_workers=opts.jobs, persistent_workers=opts.jobs > 0,
            sampler=dict(type="InfiniteSampler", shuffle=True), collate_fn=dict(type="default_collate"),
            dataset=dataset),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=iters, val_interval=iters + 1),
        optim_wrapper=dict(type="OptimWrapper", optimizer=dict(
            type="AdamW", lr=opts.lr, betas=schedule.BETAS, eps=schedule.EPS, weight_decay=opts.weight_decay)),
        param_scheduler=[dict(type="WeCLIPPolyWarmupLR", max_iters=iters, warmup=warmup, by_epoch=False)],
        default_hooks=dict(
            timer=dict(type="IterTimerHook"), logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=interval, max_keep_ckpts=3,
                            save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook")),
        custom_hooks=[dict(type="WeCLIPPhaseHook"), dict(type="MethodMetaHook", key=stage, info=info),
                      dict(type="PlainCheckpointHook")] + (
            [] if opts.verbose else [dict(type="ProgressHook", enabled=opts.progress, desc=command)]),
        log_processor=dict(by_epoch=False),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl" if torch.cuda.is_available() else "gloo")),
        randomness=dict(seed=opts.seed),
        log_level="INFO",
        work_dir=str(out),
    ))


def train_config(opts: TrainOptions, echo: Callable[[str], None] = print):
    """The mmengine config of a WeCLIP run, after every check; writes only the sample list and manifest."""
    from clipes.backbones.clip_loader import architecture, check_clip_state_dict, read_state_dict, resolve_checkpoint
    from clipes.mmseg_ext.runner import begin_training, launch_and_resume
    from clipes.store.fsutil import file_sha256

    if opts.clip is None:
        raise UserError("give CLIP: a CLIP ViT checkpoint (OpenAI .pt, .safetensors or a Hugging Face folder)")
    if opts.work is None and opts.out is None:
        raise UserError("give WORK (checkpoints go to WORK/weclip) or OUT")
    model_opts = opts.model.resolved()
    clip_path = resolve_checkpoint(opts.clip)
    state = read_state_dict(clip_path)
    check_clip_state_dict(state, clip_path)  # one line for a ResNet CLIP or another model
    arch = architecture(state)
    del state
    if arch["vision_layers"] < max(rfm.EARLY_BLOCKS, model_opts.late_blocks) + 1:
        raise UserError(f"{clip_path}: a CLIP with {arch['vision_layers']} blocks; WeCLIP averages the last "
                        f"{rfm.EARLY_BLOCKS} and fuses all but the last (needs at least {rfm.EARLY_BLOCKS + 1})")
    samples, failures = training_samples(opts, echo)
    classes, _ = prompt_lists(model_opts)
    out = Path(opts.out or Path(opts.work) / STAGE).expanduser()
    iters = opts.resolved_iters()
    info = {"clip": str(clip_path), "clip_sha256": file_sha256(clip_path), "classes": list(classes.names),
            "model": model_opts.plain(), "decoder": {"clip_width": arch["vision_width"],
                                                     "branches": arch["vision_layers"] - 1,
                                                     "width": model_opts.width,
                                                     "num_classes": len(classes.names) + 1}}
    header = {"command": manifest.command_line(), "input": {"data_root": str(opts.data_root), "split": str(opts.split),
                                                           "clip": str(clip_path)},
              **info, "training": {"iters": iters, "batch_size": opts.batch_size, "crop": opts.crop, "lr": opts.lr,
                                   "switch_iter": opts.resolved_switch(), "seed": opts.seed}}
    identity = manifest.identity_of({k: header[k] for k in ("clip_sha256", "classes", "model", "training")})
    begin_training(out, STAGE, header, identity, failures, echo)
    samples_file = write_samples(out / "train_samples.json", samples)
    cfg = decoder_run_config(
        model=dict(type="WeCLIPModel", clip=str(clip_path), model=model_opts.plain(),
                   switch_iter=opts.resolved_switch(), aff_weight=opts.aff_weight),
        dataset=dict(type="WeCLIPTrainSet", samples=str(samples_file), num_classes=len(classes.names), crop=opts.crop),
        opts=opts, iters=iters, warmup=opts.warmup_iters, batch_size=opts.batch_size, stage="weclip", info=info,
        command="train-weclip", out=out)
    launch_and_resume(cfg, out, opts.launcher, opts.resume, "train-weclip", echo)
    cfg.merge_from_dict(opts.options)
    skipped = f", {len(failures)} skipped" if failures else ""
    echo(f"train-weclip: {len(samples)} images{skipped}, {len(classes.names)} classes, {iters} iterations "
         f"(late RFM from {opts.resolved_switch()}), output {out}")
    return cfg


def run_train(opts: TrainOptions, echo: Callable[[str], None] = print) -> Path:
    """Train WeCLIP's decoder; returns the output folder (checkpoints, logs, manifest)."""
    from clipes.mmseg_ext.runner import train_and_record

    return train_and_record(train_config(opts, echo), "train-weclip", opts.verbose, echo)
