"""Reading ExCEL decoder weights: clipes checkpoints and the reference's own files.

Accepted, always through ``torch.load(weights_only=True)`` (WeCLIP's reader,
:func:`clipes.weclip.checkpoint.read_decoder_checkpoint`):

* a clipes checkpoint (``{"state_dict": {"decoder.decoder_fts_fuse.*", "decoder.decoder.*"},
  "meta": {"excel": ...}}``);
* the reference's ``model_iter_30000.pth`` (``module.encoder.*`` CLIP, ``module.decoder_fts_fuse.*``,
  ``module.decoder.*``): the CLIP weights are ignored (they come from ``CLIP=``), as the reference's
  own inference ignores its saved positional table.

The fusion head has one branch per CLIP block (WeCLIP's has one fewer); the loader checks it
against the CLIP.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clipes.errors import UserError
from clipes.weclip.checkpoint import read_decoder_checkpoint
from clipes.weclip.decoder import decoder_config

META_KEY = "excel"


def read_decoder_state(path: Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """``(state under the reference's names, meta, "clipes" | "reference")`` of an ExCEL checkpoint.

    Raises:
        UserError: missing or unsafe file, not an ExCEL-family decoder, or a clipes checkpoint of
            another method.
    """
    state, meta, kind = read_decoder_checkpoint(path, "ExCEL", META_KEY, "decoder_fts_fuse.",
                                                ("decoder_fts_fuse.", "decoder."), decoder_config)
    if kind == "clipes" and not meta:
        raise UserError(f"{path} is a clipes checkpoint of another method (no ExCEL record); "
                        f"give an ExCEL checkpoint (train-excel's iter_N.pth or the reference's model_iter_N.pth)")
    return state, meta, kind
