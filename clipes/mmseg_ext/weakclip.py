"""WeakCLIP as MMSegmentation 1.x components (the mmseg-aware half of :mod:`clipes.weakclip`).

Registered when :mod:`clipes.mmseg_ext` is imported:

* ``WeakCLIP``: the segmentor. Its image and text encoders wrap the CLIP read by clipes' loader
  (``clip=``, any format it reads), its neck and decoder are mmseg's own ``FPN`` and ``FPNHead``
  built from the config, and ``loss`` is the seed + CRF boundary + 0.4 x score-map loss.
* ``WeakCLIPCosineLR``: the per-group warm-up x cosine schedule with the absolute floor.
* ``MapSeedLabels``: clipes' contiguous COCO labels -> category ids for the 91-way model.
* (the shared ``MethodMetaHook`` records the CLIP's sha256, label space and classes in each
  checkpoint's ``meta["weakclip"]``).

Checkpoints never hold the CLIP: the trainable parts as they are, and the CLIP encoders as their
change from the CLIP file (``clip_delta.*``, the min-lr leak of spec 12); with ``frozen_clip`` no
CLIP tensor at all. A reference checkpoint (CLIP weights included or not) loads as is.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import BaseTransform
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS, PARAM_SCHEDULERS, TRANSFORMS
from torch import nn

from clipes.backbones.clip_loader import load_clip
from clipes.errors import UserError
from clipes.weakclip import classes as label_spaces
from clipes.weakclip import schedule
from clipes.weakclip.coattention import CoAttention, match, pyramid_inputs
from clipes.weakclip.encoders import PromptTextEncoder, VisionEncoder, tokenize_names
from clipes.weakclip.inference import slide_logits
from clipes.weakclip.losses import weakclip_losses

DELTA = "clip_delta."


def is_clip_key(name: str) -> bool:
    """Whether a state-dict key belongs to the CLIP encoders (not the adapter)."""
    return (name.startswith("backbone.") and not name.startswith("backbone.fpn")) or name.startswith("text_encoder.")


@MODELS.register_module()
class WeakCLIP(BaseSegmentor):
    """WeakCLIP (spec 3-10) on a CLIP ViT.

    Args:
        clip: CLIP checkpoint (OpenAI .pt, .safetensors or a Hugging Face folder).
        label_space: ``voc`` (21), ``coco91`` (the release), ``coco81`` or ``custom`` (``class_names``).
        class_names: the foreground names of ``custom``.
        input_resolution: training crop (the positional table is resized to crop / patch).
        n_contexts / name_length: learned context vectors [8] and tokens per name [5].
        drop_path_rate / drop_path_layout: stochastic depth in the image encoder [0.1, ``token``].
        adapter_norm: ``SyncBN`` (as released) or ``BN``.
        coattention: :class:`~clipes.weakclip.coattention.CoAttention` arguments (``width``, ``heads``,
            ``layers``, ``dropout``, ``chained``).
        neck / decode_head: mmseg configs (``FPN``, ``FPNHead``); ``in_channels`` and ``num_classes``
            are filled in from the CLIP and the label space when left None.
        feature_size: the loss grid [64, 64]; tau: score-map temperature of the identity loss [0.07];
            id_weight: its weight [0.4].
        frozen_clip: exactly frozen CLIP encoders (no gradient, no graph, nothing saved); the
            default trains them as the reference's optimiser does (lr_mult 0 + the min-lr leak).
        test_cfg: ``dict(crop_size=512, stride=341)`` of the slide inference.
    """

    def __init__(self, clip: str, label_space: str = "voc", class_names=None, input_resolution: int = 512,
                 n_contexts: int = 8, name_length: int = 5, drop_path_rate: float = 0.1,
                 drop_path_layout: str = "token", adapter_norm: str = "SyncBN", coattention: dict | None = None,
                 neck: dict | None = None, decode_head: dict | None = None, feature_size=(64, 64),
                 tau: float = 0.07, id_weight: float = 0.4, frozen_clip: bool = False, data_preprocessor=None,
                 train_cfg=None, test_cfg=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if label_space not in (*label_spaces.SPACES, "custom"):
            raise UserError(f"unknown label space {label_space!r}; expected voc, coco91, coco81 or custom")
        names = label_spaces.class_names(label_space, tuple(class_names or ()))
        loaded = load_clip(str(clip))
        self.clip_path, self.clip_sha256 = str(loaded.path), loaded.sha256
        self.label_space, self.class_names = label_space, list(names)
        self.input_resolution, self.n_contexts, self.name_length = int(input_resolution), int(n_contexts), \
            int(name_length)
        self.drop_path_rate, self.drop_path_layout, self.adapter_norm = drop_path_rate, drop_path_layout, adapter_norm
        self.backbone, self.text_encoder = self._encoders(loaded.model)
        if self.text_encoder.width != self.text_encoder.embed_dim:
            raise UserError(f"{loaded.path}: text width {self.text_encoder.width} differs from its embedding width "
                            f"{self.text_encoder.embed_dim}; WeakCLIP's contexts need them equal")
        embed, width, k = self.text_encoder.embed_dim, self.backbone.width, len(names)
        self.register_buffer("tokens", tokenize_names(names, name_length), persistent=False)
        self.contexts = nn.Parameter(torch.randn(1, n_contexts, self.text_encoder.width))
        nn.init.trunc_normal_(self.contexts)  # std 1, cut at +-2 (spec 4.4)
        self.gamma = nn.Parameter(torch.ones(embed) * 0.1)
        self.beta = nn.Parameter(torch.ones(embed) * 0.1)
        self.context_decoder = CoAttention(embed, **(coattention or {}))
        neck = dict(neck or dict(type="FPN", out_channels=256, num_outs=4))
        if neck.get("in_channels") is None:
            neck["in_channels"] = [width + k] * 4
        if neck["in_channels"] != [width + k] * 4:
            raise UserError(f"{loaded.path}: a CLIP of width {width} with {k} classes gives neck inputs of "
                            f"{width + k} channels; the config says {neck['in_channels']}")
        self.neck = MODELS.build(neck)
        head = dict(decode_head)
        if head.get("num_classes") is None:
            head["num_classes"] = k
        if head["num_classes"] != k:
            raise UserError(f"the config's decode head has {head['num_classes']} classes; {label_space} has {k}")
        self.decode_head = MODELS.build(head)
        self.num_classes = k
        self.feature_size, self.tau, self.id_weight = tuple(feature_size), float(tau), float(id_weight)
        self.test_cfg = dict(test_cfg or {})
        self.frozen_clip = bool(frozen_clip)
        self.backbone.frozen = self.frozen_clip
        # clipes' loader hands the CLIP over frozen; the reference trains it (at lr_mult 0 + the leak)
        for p in self.backbone.clip_parameters() + list(self.text_encoder.parameters()):
            p.requires_grad_(not self.frozen_clip)
        self._register_state_dict_hook(_save_clip_delta)
        self._register_load_state_dict_pre_hook(_load_clip_delta, with_module=True)

    def _encoders(self, clip_model):
        backbone = VisionEncoder(clip_model.visual, self.input_resolution, self.drop_path_rate, self.drop_path_layout,
                                 self.adapter_norm)
        return backbone, PromptTextEncoder(clip_model, self.n_contexts + self.name_length, self.name_length)

    def clip_state(self) -> dict:
        """The CLIP encoders' tensors as the CLIP file gives them (re-read; for the deltas)."""
        backbone, text = self._encoders(load_clip(self.clip_path).model)
        state = {f"backbone.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("fpn")}
        state.update({f"text_encoder.{k}": v for k, v in text.state_dict().items()})
        return state

    def init_weights(self):
        """Nothing: the reference never runs mmseg's initialisers (PyTorch defaults, spec 6, 9)."""
        self._is_init = True

    # ---- forward -----------------------------------------------------------------------------
    def text_embeddings(self) -> torch.Tensor:
        """``[1, K, E]``: T0, the prompt learner + text encoder output."""
        return self.text_encoder(self.tokens, self.contexts)

    def features(self, inputs: torch.Tensor) -> dict:
        """Every intermediate of the forward of ``inputs`` ``[B, 3, H, W]`` (normalised RGB)."""
        adapted, global_embedding, visual, taps = self.backbone(inputs)
        text = self.text_embeddings()
        b = inputs.shape[0]
        score, text_updated, context, text_diff, visual_diff = match(
            text.expand(b, -1, -1), global_embedding, visual, self.context_decoder, self.gamma, self.beta)
        neck_in = pyramid_inputs(adapted, score)
        neck_out = self.neck(neck_in)
        return dict(taps=taps, adapted=adapted, global_embedding=global_embedding, visual=visual, text=text,
                    context=context, text_diff=text_diff, visual_diff=visual_diff, text_updated=text_updated,
                    score=score, neck_in=neck_in, neck_out=list(neck_out))

    def extract_feat(self, inputs: torch.Tensor):
        return self.features(inputs)["neck_out"]

    def encode_decode(self, inputs: torch.Tensor, batch_img_metas=None) -> torch.Tensor:
        """Logits at the input size ``[B, K, H, W]`` (bilinear from 1/4)."""
        logits = self.decode_head(self.extract_feat(inputs))
        return F.interpolate(logits, size=inputs.shape[2:], mode="bilinear", align_corners=False)

    def _forward(self, inputs, data_samples=None):
        return self.decode_head(self.extract_feat(inputs))

    def loss(self, inputs: torch.Tensor, data_samples) -> dict:
        seeds = torch.stack([sample.gt_sem_seg.data for sample in data_samples]).long()  # [B, 1, H, W]
        feats = self.features(inputs)
        logits = self.decode_head(feats["neck_out"])
        mean = self.data_preprocessor.mean.flatten().tolist()
        std = self.data_preprocessor.std.flatten().tolist()
        parts = weakclip_losses(logits, feats["score"], seeds, inputs, mean, std, self.feature_size, self.tau,
                                self.id_weight)
        return {"loss_seed": parts.seed, "loss_boundary": parts.boundary, "loss_identity": parts.identity,
                "acc_seg": parts.accuracy}

    def predict(self, inputs: torch.Tensor, data_samples=None):
        """Slide-window logits of each (padded) input, for mmseg's validation loop."""
        crop, stride = int(self.test_cfg.get("crop_size", 512)), int(self.test_cfg.get("stride", 341))
        logits = torch.cat([slide_logits(lambda x: self.encode_decode(x), image[None], self.num_classes, crop, stride)
                            for image in inputs])
        return self.postprocess_result(logits, data_samples)


def _save_clip_delta(module: WeakCLIP, state: dict, prefix: str, local_metadata) -> dict:
    keys = [k for k in list(state) if k.startswith(prefix) and is_clip_key(k[len(prefix):])]
    if not keys:
        return state
    if module.frozen_clip:
        for key in keys:
            del state[key]
        return state
    original = module.clip_state()
    for key in keys:
        name = key[len(prefix):]
        value = state.pop(key)
        state[prefix + DELTA + name] = (value.detach() - original[name].to(value.device, value.dtype)).cpu()
    return state


def _load_clip_delta(module: WeakCLIP, state: dict, prefix: str, local_metadata, strict, missing, unexpected,
                     errors) -> None:
    """``clip_delta.X`` -> the model's X (still the CLIP file's) + delta; CLIP tensors a checkpoint
    leaves out keep the CLIP file's values (frozen runs, reference checkpoints without CLIP)."""
    own = dict(module.named_parameters())  # the CLIP encoders hold no persistent buffers
    for key in [k for k in list(state) if k.startswith(prefix + DELTA)]:
        name = key[len(prefix + DELTA):]
        delta = state.pop(key)
        if name in own:
            state[prefix + name] = own[name].detach() + delta.to(own[name].device, own[name].dtype)
    for name, tensor in own.items():
        if is_clip_key(name) and prefix + name not in state:
            state[prefix + name] = tensor.detach().clone()


@PARAM_SCHEDULERS.register_module()
class WeakCLIPCosineLR(_ParamScheduler):
    """Per-group ``lr = lr_at(t, group's initial lr)`` (spec 12; ``leak=False``: lr-0 groups stay 0)."""

    def __init__(self, optimizer, max_iters: int, min_lr: float = schedule.MIN_LR,
                 warmup: int = schedule.WARMUP_ITERS, ratio: float = schedule.WARMUP_RATIO, leak: bool = True,
                 **kwargs):
        self.max_iters, self.min_lr, self.warmup, self.ratio, self.leak = int(max_iters), float(min_lr), int(warmup), \
            float(ratio), bool(leak)
        kwargs.setdefault("by_epoch", False)
        super().__init__(optimizer, "lr", **kwargs)

    def _get_value(self):
        return [schedule.lr_at(self.last_step, base, self.max_iters, self.min_lr, self.warmup, self.ratio, self.leak)
                for base in self.base_values]


@TRANSFORMS.register_module()
class MapSeedLabels(BaseTransform):
    """Map the seed values through the label space's table (``coco91``: contiguous k -> category id)."""

    def __init__(self, label_space: str = "voc"):
        self.lut = label_spaces.seed_lut(label_space)

    def transform(self, results: dict) -> dict:
        if self.lut is not None:
            results["gt_seg_map"] = self.lut[np.asarray(results["gt_seg_map"], dtype=np.uint8)]
        return results


# ---- train-weakclip ----------------------------------------------------------------------------
def _label_space(cfg, info: dict, seed_labels: str) -> tuple[str, list[str], int]:
    """``(label space, model class names, number of seed values)`` after the class-count checks."""
    space = cfg.model.get("label_space", "voc")
    given = info.get("classes")
    if space == "custom":
        names = cfg.model.get("class_names") or given
        if not names:
            raise UserError("the config's label space is custom and no manifest lists the classes: give DATASET or "
                            "CLASSES, or OPTIONS=\"model.class_names=[...]\"")
        cfg.model.class_names = list(names)
        return space, ["background", *names], len(names) + 1
    names = list(label_spaces.class_names(space))
    mapped = label_spaces.SPACES[space][1]  # coco91: clipes' contiguous labels map into category ids
    contiguous = len(label_spaces.COCO81) if mapped else len(names)
    if given and len(given) + 1 != contiguous:
        raise UserError(f"the seeds have {len(given)} classes but the config's label space {space} has "
                        f"{contiguous - 1}; use a config for this dataset")
    return space, names, contiguous if seed_labels == "clipes" else len(names)


def train_config(opts, echo=print):
    """The mmengine config of a WeakCLIP run after every check (seeds, images, CLIP width); writes
    only the split file and the run's manifest.

    Raises:
        UserError: one line: no seeds, bad seed files, empty split, a CLIP that does not fit the
            config, unknown label space, bad options.
    """
    from clipes.backbones.clip_loader import architecture, check_clip_state_dict, read_state_dict, resolve_checkpoint
    from clipes.data.datasets import read_split
    from clipes.data.segdata import check_training_set, dataset_paths, stage_info
    from clipes.mmseg_ext.runner import LAUNCHERS, _write_split, begin_training, launch_and_resume, load_config
    from clipes.store import manifest, maskstore
    from clipes.store.fsutil import file_sha256, ids_in
    from clipes.weakclip.options import SEED_LABELS, STAGE, VOC_CONFIG

    config = Path(opts.config or VOC_CONFIG).expanduser()
    cfg = load_config(config)
    cfg.merge_from_dict(opts.options)
    if opts.work is None and opts.seeds is None:
        raise UserError("give WORK (seeds from WORK/masks) or SEEDS: a folder of seed mask PNGs")
    if opts.launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {opts.launcher!r}; expected one of {LAUNCHERS}")
    seeds = Path(opts.seeds or Path(opts.work) / maskstore.MASKS_STAGE).expanduser()
    if not seeds.is_dir():
        raise UserError(f"no seeds: {seeds} not found (run `make refine` first, or give SEEDS=<folder of PNGs>)")
    info = stage_info(seeds, opts.classes, opts.dataset)
    seed_labels = opts.seed_labels or ("clipes" if info["clipes"] else "model")
    if seed_labels not in SEED_LABELS:
        raise UserError(f"seed labels must be one of {SEED_LABELS}, not {seed_labels!r}")
    space, names, seed_values = _label_space(cfg, info, seed_labels)
    dataset, data_root, image_dir = dataset_paths(info, opts.dataset, opts.data_root, opts.images_dir)
    # the CLIP, checked against the config before anything runs
    clip_source = opts.clip or cfg.model.get("clip")
    if not clip_source:
        raise UserError("give CLIP: a CLIP ViT checkpoint (OpenAI .pt, .safetensors or a Hugging Face folder)")
    clip_path = resolve_checkpoint(str(clip_source))
    state = read_state_dict(clip_path)
    check_clip_state_dict(state, clip_path)
    arch = architecture(state)
    del state
    width, k = arch["vision_width"], len(names)
    neck_in = cfg.model.neck.get("in_channels")
    if neck_in is not None and list(neck_in) != [width + k] * 4:
        raise UserError(f"{clip_path}: a CLIP of width {width} gives neck inputs of {width} + {k} classes = "
                        f"{width + k} channels; {config.name} expects {list(neck_in)[0]} (a ViT-B/16-wide CLIP?)")
    if arch["vision_layers"] < 12:
        raise UserError(f"{clip_path}: a CLIP image encoder with {arch['vision_layers']} blocks; WeakCLIP taps "
                        f"blocks 4, 6, 8 and 12")
    if arch["text_width"] != arch["embed_dim"]:
        raise UserError(f"{clip_path}: text width {arch['text_width']} differs from the embedding width "
                        f"{arch['embed_dim']}; WeakCLIP's context vectors need them equal")
    cfg.model.clip = str(clip_path)
    # the training set, every seed read once
    out = Path(opts.out or Path(opts.work or seeds.parent) / STAGE).expanduser()
    if opts.split is not None:
        split = Path(opts.split).expanduser()
        ids = [image_id for image_id, _ in read_split(split)]
    else:
        ids, split = sorted(ids_in(seeds, ".png")), None
    checked = check_training_set(ids, image_dir, seeds, seed_values, what="seed set", echo=echo)
    failures = dict(checked.failures)
    splits = [split if split is not None and not checked.failures else
              _write_split(out / "train_split.txt", checked.ids)]
    count = len(checked.ids)
    if opts.extra_split is not None:
        extra = Path(opts.extra_split).expanduser()
        extra_checked = check_training_set([i for i, _ in read_split(extra)], image_dir, seeds, seed_values,
                                           what="extra seed set", echo=echo)
        failures.update(extra_checked.failures)
        count += len(extra_checked.ids)
        splits.append(extra if not extra_checked.failures else
                      _write_split(out / "extra_split.txt", extra_checked.ids))
    palette = maskstore.voc_palette()
    metainfo = dict(classes=tuple(names), palette=[palette[3 * (i % 256):3 * (i % 256) + 3] for i in range(k)])
    base = dict(cfg.train_dataloader.dataset)
    pipeline = [dict(t, label_space=space if seed_labels == "clipes" else "none") if t["type"] == "MapSeedLabels"
                else t for t in base["pipeline"]]
    parts = [dict(base, split=str(s), image_dir=str(image_dir), seg_dir=str(seeds), confidence_dir=None,
                  metainfo=metainfo, pipeline=pipeline) for s in splits]
    cfg.train_dataloader.dataset = parts[0] if len(parts) == 1 else dict(type="ConcatDataset", datasets=parts)
    # the documented variants and the common knobs
    if opts.frozen_clip:
        cfg.model.frozen_clip = True
    if opts.chained_coattention:
        cfg.model.coattention = dict(cfg.model.get("coattention") or {}, chained=True)
    if opts.adapter_lr_mult is not None:
        cfg.optim_wrapper.paramwise_cfg.custom_keys["backbone.fpn"] = dict(lr_mult=float(opts.adapter_lr_mult))
    if opts.iters:
        cfg.train_cfg.max_iters, cfg.train_cfg.val_interval = int(opts.iters), int(opts.iters) + 1
        for scheduler in cfg.param_scheduler:
            if scheduler.get("type") == "WeakCLIPCosineLR":
                scheduler["max_iters"], scheduler["end"] = int(opts.iters), int(opts.iters)
                scheduler["warmup"] = min(int(scheduler.get("warmup", 0)), int(opts.iters))
    if opts.batch_size:
        cfg.train_dataloader.batch_size = int(opts.batch_size)
    if opts.lr:
        cfg.optim_wrapper.optimizer.lr = float(opts.lr)
    if opts.jobs is not None:
        cfg.train_dataloader.num_workers = int(opts.jobs)
        cfg.train_dataloader.persistent_workers = int(opts.jobs) > 0
    iters = int(cfg.train_cfg.max_iters)
    for scheduler in cfg.param_scheduler:  # mmengine ends an undated scheduler after max_epochs (= 1) steps
        scheduler.setdefault("by_epoch", False)
    sha = file_sha256(clip_path)
    meta = {"clip": str(clip_path), "clip_sha256": sha, "label_space": space, "classes": names,
            "seed_classes": info.get("classes") or names[1:], "seed_labels": seed_labels,
            "dataset": dataset, "frozen_clip": bool(cfg.model.get("frozen_clip"))}
    header = {"command": manifest.command_line(), "method": "weakclip",
              "input": {"seeds": str(seeds), "dataset": dataset, "data_root": str(data_root.resolve()),
                        "images": str(image_dir.resolve()), "clip": str(clip_path), "config": str(config)},
              **meta, "training": {"iters": iters, "batch_size": int(cfg.train_dataloader.batch_size),
                                   "lr": float(cfg.optim_wrapper.optimizer.lr), "images": count}}
    model_fields = {k: v for k, v in cfg.model.to_dict().items() if k != "clip"}  # paths are not identity
    identity = manifest.identity_of({
        "clip_sha256": sha, "model": model_fields, "optim": cfg.optim_wrapper.to_dict(),
        "schedule": [dict(s) for s in cfg.param_scheduler], "iters": iters, "pipeline": pipeline,
        "batch_size": int(cfg.train_dataloader.batch_size), "ids": manifest.identity_of({"ids": ids}),
        "extra": opts.extra_split is not None, "seed_labels": seed_labels})
    begin_training(out, STAGE, header, identity, failures, echo)
    cfg.work_dir = str(out)
    hooks = list(cfg.get("custom_hooks") or [])
    hooks += [dict(type="MethodMetaHook", key="weakclip", info=meta), dict(type="PlainCheckpointHook")]
    if not opts.verbose:
        hooks.append(dict(type="ProgressHook", enabled=opts.progress, desc="train-weakclip", lr_group=-1))
    cfg.custom_hooks = hooks
    # the co-attention's dead layers get no gradient: DDP must look for unused parameters
    launch_and_resume(cfg, out, opts.launcher, opts.resume, "train-weakclip", echo, find_unused=True)
    cfg.merge_from_dict(opts.options)
    skipped = f" ({len(failures)} left out)" if failures else ""
    echo(f"train-weakclip: {count} seed masks{skipped} ({seed_labels} labels), {space} label space with {k} classes, "
         f"{iters} iterations, CLIP {'frozen' if cfg.model.get('frozen_clip') else 'trained at the min-lr leak'}; "
         f"output {out}")
    return cfg


def run_train(opts, echo=print) -> Path:
    """Train WeakCLIP on seed masks; returns the output folder (checkpoints, logs, manifest)."""
    from clipes.mmseg_ext.runner import train_and_record

    return train_and_record(train_config(opts, echo), "train-weakclip", opts.verbose, echo)


# ---- loading a checkpoint for masks-weakclip ---------------------------------------------------------
def load_model(checkpoint: Path, clip: str | None = None, config: Path | None = None, device: str = "cpu",
               echo=print):
    """A WeakCLIP in eval mode from a clipes or reference checkpoint.

    Returns:
        ``(model, cfg, meta)``: the model on ``device``, its mmengine config (the one a clipes
        checkpoint recorded, else ``config`` / the released one for its class count) and the
        checkpoint's ``meta["weakclip"]`` (empty for reference checkpoints).

    Raises:
        UserError: not a WeakCLIP checkpoint, no CLIP, a CLIP or config that does not fit it.
    """
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    from clipes.mmseg_ext.runner import load_config
    from clipes.weakclip.checkpoint import dimensions, read_checkpoint
    from clipes.weakclip.options import COCO_CONFIG, VOC_CONFIG

    state, meta, kind = read_checkpoint(checkpoint)
    dims = dimensions(state)
    info = dict(meta.get("weakclip") or {})
    if config is not None:
        cfg = load_config(config)
    elif kind == "clipes" and meta.get("cfg"):
        cfg = Config.fromstring(meta["cfg"], ".py")
    elif dims["num_classes"] in (21, 91):
        cfg = load_config(VOC_CONFIG if dims["num_classes"] == 21 else COCO_CONFIG)
    else:
        raise UserError(f"{checkpoint} predicts {dims['num_classes']} classes: give CONFIG (the model's config)")
    clip_source = clip or info.get("clip") or cfg.model.get("clip")
    if not clip_source:
        raise UserError(f"give CLIP: {checkpoint} is a reference checkpoint and names no CLIP")
    model_cfg = dict(cfg.model)
    model_cfg["clip"] = str(clip_source)
    with DefaultScope.overwrite_default_scope("mmseg"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # mmseg's notes on the head's unused loss_decode
        model = MODELS.build(model_cfg)
    if model.num_classes != dims["num_classes"] or model.backbone.width != dims["clip_width"]:
        raise UserError(f"{checkpoint} has {dims['num_classes']} classes on a CLIP of width {dims['clip_width']}; "
                        f"the model built from {clip_source} and the config has {model.num_classes} on width "
                        f"{model.backbone.width}")
    if info.get("clip_sha256") and info["clip_sha256"] != model.clip_sha256:
        echo(f"warning: {model.clip_path} is not the CLIP {checkpoint} was trained with "
             f"(sha256 {model.clip_sha256[:12]} vs {info['clip_sha256'][:12]})")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise UserError(f"{checkpoint} does not fit the model: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise UserError(f"{checkpoint} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.checkpoint_kind = kind
    return model.to(device).eval(), cfg, info
