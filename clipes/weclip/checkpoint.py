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


def read_decoder_checkpoint(path: Path, method: str, meta_key: str, marker: str, kept: tuple[str, ...],
                            config) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Decoder weights of a clipes or reference checkpoint of a WeCLIP-family method.

    Args:
        path: the file.
        method: how messages name the method (``WeCLIP``).
        meta_key: where a clipes checkpoint keeps its record (``meta[meta_key]``).
        marker: a key prefix only this method's decoder has (``decoder_fts_fuse.``); in a clipes
            checkpoint it sits under the model's ``decoder.``.
        kept: the reference key prefixes of the trainable part (everything else, e.g. the frozen
            backbones a reference checkpoint also saves, is ignored).
        config: the sizes of a state dict (raises ``KeyError`` when incomplete).

    Returns:
        ``(state under the reference's key names, meta (empty for reference files), kind)`` with
        kind ``"clipes"`` or ``"reference"``.

    Raises:
        UserError: missing or unsafe file, or not a checkpoint of this method.
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
        raise UserError(f"{path} is not a {method} checkpoint: no state dict of tensors")
    state = strip_prefix(data, "module.")
    if any(k.startswith(CLIPES_PREFIX + marker) for k in state):
        state, kind = {k[len(CLIPES_PREFIX):]: v for k, v in state.items() if k.startswith(CLIPES_PREFIX)}, "clipes"
    elif any(k.startswith(marker) for k in state):
        state = {k: v for k, v in state.items() if k.startswith(kept)}
        kind = "reference"
    else:
        raise UserError(f"{path} is not a {method} checkpoint: no {marker}* weights "
                        f"(a clipes or reference {method} decoder)")
    try:
        config(state)
    except KeyError as exc:
        raise UserError(f"{path}: incomplete {method} decoder, {exc.args[0]} missing") from None
    return state, (meta.get(meta_key) or {}) if kind == "clipes" else {}, kind


def read_decoder_state(path: Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Decoder weights of a WeCLIP checkpoint (see :func:`read_decoder_checkpoint`)."""
    return read_decoder_checkpoint(path, "WeCLIP", "weclip", "decoder_fts_fuse.", ("decoder_fts_fuse.", "decoder."),
                                   decoder_config)
