"""WeakCLIP checkpoints: clipes' own (mmengine ``iter_N.pth``) and the reference's (mmseg 0.19).

Both are ``{"state_dict": ..., "meta": ...}`` (a bare state dict is accepted too), read with
``weights_only=True``. Keys are the reference's; ``module.`` prefixes (DDP) are dropped. clipes'
checkpoints carry the CLIP encoders as ``clip_delta.*`` (their change from the CLIP file) or not at
all (``frozen_clip``); the reference's may carry the full CLIP weights, which then win.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clipes.errors import UserError
from clipes.store.checkpoints import safe_load, strip_prefix

REQUIRED = ("contexts", "gamma", "beta", "decode_head.conv_seg.weight", "context_decoder.text_proj.1.weight",
            "neck.lateral_convs.0.conv.weight", "backbone.fpn3.weight")


def read_checkpoint(path: Path) -> tuple[dict, dict, str]:
    """``(state, meta, kind)`` of a WeakCLIP checkpoint; ``kind`` is ``clipes`` or ``reference``.

    Raises:
        UserError: unreadable, unsafe (needs unpickling code), or not a WeakCLIP checkpoint.
    """
    path = Path(path).expanduser()
    data = safe_load(path)
    if not isinstance(data, dict):
        raise UserError(f"{path} holds no state dict")
    state = data.get("state_dict", data)
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds no state dict of tensors")
    state = strip_prefix(state, "module.")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise UserError(f"{path} is not a WeakCLIP checkpoint (no {', '.join(missing[:3])})")
    return state, meta, "clipes" if "weakclip" in meta else "reference"


def dimensions(state: dict) -> dict:
    """What a checkpoint says about its model: classes, widths, contexts."""
    return {"num_classes": int(state["decode_head.conv_seg.weight"].shape[0]),
            "clip_width": int(state["backbone.fpn3.weight"].shape[0]),
            "coattention_width": int(state["context_decoder.text_proj.1.weight"].shape[0]),
            "embed_dim": int(state["gamma"].shape[0]),
            "decoder_width": int(state["decode_head.conv_seg.weight"].shape[1]),
            "n_contexts": int(state["contexts"].shape[1])}
