"""Reading WeCLIP+ decoder weights: clipes checkpoints and the reference's own files.

Accepted, always through ``torch.load(weights_only=True)`` (WeCLIP's reader,
:func:`clipes.weclip.checkpoint.read_decoder_checkpoint`):

* a clipes checkpoint (``{"state_dict": {"decoder.decoder_fts_fuse.*", "decoder.dino_decoder_fts_fuse.*",
  "decoder.decoder.*"}, "meta": {"weclipplus": ...}}``);
* the reference's state dict (``decoder_fts_fuse.*``, ``dino_decoder_fts_fuse.*``, ``decoder.*``),
  alone or inside its full model state (its ``encoder.*`` CLIP and ``dino_encoder.*`` DINOv2
  weights are ignored: they come from ``CLIP=`` and ``DINO=``), with or without ``module.``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clipes.weclip.checkpoint import read_decoder_checkpoint
from clipes.weclip_plus.decoder import decoder_config

META_KEY = "weclipplus"


def read_decoder_state(path: Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """``(state under the reference's names, meta, "clipes" | "reference")`` of a WeCLIP+ checkpoint.

    Raises:
        UserError: missing or unsafe file, or not a WeCLIP+ checkpoint.
    """
    return read_decoder_checkpoint(path, "WeCLIP+", META_KEY, "dino_decoder_fts_fuse.",
                                   ("decoder_fts_fuse.", "dino_decoder_fts_fuse.", "decoder."), decoder_config)
