"""WeakCLIP as MMSegmentation 1.x components (the mmseg-aware half of :mod:`clipes.weakclip`).

Registered when :mod:`clipes.mmseg_ext` is imported:

* ``WeakCLIP``: the segmentor. Its image and text encoders wrap the CLIP read by clipes' loader
  (``clip=``, any format it reads), its neck and decoder are mmseg's own ``FPN`` and ``FPNHead``
  built from the config, and ``loss`` is the seed + CRF boundary + 0.4 x score-map loss.
* ``WeakCLIPCosineLR``: the per-group warm-up x cosine schedule with the absolute floor.
* ``MapSeedLabels``: clipes' contiguous COCO labels -> category ids for the 91-way model.
* ``WeakCLIPMetaHook``: the CLIP's sha256, label space and classes in each checkpoint's meta.

Checkpoints never hold the CLIP: the trainable parts as they are, and the CLIP encoders as their
change from the CLIP file (``clip_delta.*``, the min-lr leak of spec 12); with ``frozen_clip`` no
CLIP tensor at all. A reference checkpoint (CLIP weights included or not) loads as is.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from mmcv.transforms import BaseTransform
from mmengine.hooks import Hook
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import HOOKS, MODELS, PARAM_SCHEDULERS, TRANSFORMS
from torch import nn

from clipes.clip_loader import load_clip
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
        if self.frozen_clip:
            self.backbone.frozen = True
            for p in self.backbone.clip_parameters() + list(self.text_encoder.parameters()):
                p.requires_grad_(False)
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


@HOOKS.register_module()
class WeakCLIPMetaHook(Hook):
    """Record the CLIP, the label space and the model settings in each checkpoint (``meta["weakclip"]``)."""

    def __init__(self, info: dict):
        self.info = json.loads(json.dumps(info))

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint.setdefault("meta", {})["weakclip"] = json.loads(json.dumps(self.info))
