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
from clipes.weclip.decoder import decoder_config

CLIPES_PREFIX = "decoder."  # the mmengine model holds the WeCLIPDecoder as ``decoder``


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def read_decoder_state(path: Path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """Decoder weights of a WeCLIP checkpoint.

    Returns:
        ``(state under the reference's key names, meta (empty for reference files), kind)`` with
        kind ``"clipes"`` or ``"reference"``.

    Raises:
        UserError: missing or unsafe file, or not a WeCLIP checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot load checkpoint {path} safely (tensors and plain data only): "
                        f"{type(exc).__name__}: {first}") from None
    meta = {}
    if isinstance(data, dict):
        meta = data.get("meta") if isinstance(data.get("meta"), dict) else {}
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(f"{path} is not a WeCLIP checkpoint: no state dict of tensors")
    state = _strip(data, "module.")
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
