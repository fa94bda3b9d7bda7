"""Reading WeCLIP decoder weights: clipes checkpoints and the reference's own files (spec 8, issue 18.5).

Accepted, always through ``torch.load(weights_only=True)``:

* a clipes checkpoint (mmengine's ``{"state_dict": {"decoder.decoder_fts_fuse.*", ...}, "meta": ...}``),
  whose ``meta["weclip"]`` names the CLIP's sha256, the classes and the options it was trained with;
* the reference's decoder state dict (``decoder_fts_fuse.*`` and ``decoder.*`` keys, as the goldens'
  ``decoder_init.pt``), alone or inside the reference's full model state (its ``encoder.*`` CLIP
  weights are ignored: the CLIP comes from ``CLIP=``), with or without ``module.`` prefixes or a
  ``state_dict`` / ``model`` wrapper.
"""

from __future__ import annotations

from pathlib import Path

import torch

from clipes.errors import UserError
from clipes.store.checkpoints import safe_load, strip_prefix
from clipes.weclip.decoder import decoder_config

CLIPES_PREFIX = "decoder."  # the mmengine model holds the WeCLIPDecoder as ``decoder``


def read_decoder_state(path: Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Decoder weights of a WeCLIP checkpoint.

    Returns:
        ``(state under the reference's key names, meta (empty for reference files), kind)`` with
        kind ``"clipes"`` or ``"reference"``.

    Raises:
        UserError: missing or unsafe file, or not a WeCLIP checkpoint.
    """
    path = Path(path).expanduser()
    data = safe_load(path)
    meta = {}
    if isinstance(data, dict):
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{path} is not a WeCLIP checkpoint: no state dict of tensors")
    state = strip_prefix(data, "module.")
    if any(k.startswith(CLIPES_PREFIX + "decoder_fts_fuse.") for k in state):
        state, kind = {k[len(CLIPES_PREFIX):]: v for k, v in state.items() if k.startswith(CLIPES_PREFIX)}, "clipes"
    elif any(k.startswith("decoder_fts_fuse.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith(("decoder_fts_fuse.", "decoder."))}
        kind = "reference"
    else:
        raise UserError(f"{path} is not a WeCLIP checkpoint: no decoder_fts_fuse.* weights "
                        f"(a clipes or reference WeCLIP decoder)")
    try:
        decoder_config(state)
    except KeyError as exc:
        raise UserError(f"{path}: incomplete WeCLIP decoder, {exc.args[0]} missing") from None
    return state, (meta.get("weclip") or {}) if kind == "clipes" else {}, kind
