"""Text features for class and background prompts (spec section 2), computed once per run."""

from __future__ import annotations

import torch

from clipes.compat import import_clip


@torch.no_grad()
def encode_prompts(model: torch.nn.Module, strings: list[str], templates: list[str],
                   synonyms: str = "joined") -> torch.Tensor:
    """Template-ensembled, L2-normalised text features, one per string.

    Per template: tokenize, encode, L2-normalise; then average over templates and normalise again.

    Args:
        model: ``clip.model.CLIP``.
        strings: one prompt string per class, e.g. ``"person with clothes,people,human"``.
        templates: templates containing ``{}``.
        synonyms: ``"joined"`` (reference): the whole string is one prompt and one embedding.
            ``"split"``: the string is split on commas, each synonym is encoded, and their
            normalised features are averaged (then normalised again).

    Returns:
        ``[len(strings), D]`` float32 on the model's device.
    """
    if synonyms not in ("joined", "split"):
        raise ValueError(f"synonyms must be 'joined' or 'split', not {synonyms!r}")
    if not strings:
        raise ValueError("no prompt strings to encode")
    clip = import_clip()
    device = model.token_embedding.weight.device
    parts = [[s] if synonyms == "joined" else [p.strip() for p in s.split(",") if p.strip()] or [s]
             for s in strings]
    flat = [p for group in parts for p in group]
    per_template = []
    for template in templates:
        tokens = clip.tokenize([template.format(p) for p in flat]).to(device)  # [P, 77]
        feats = model.encode_text(tokens).float()  # [P, D]
        per_template.append(feats / feats.norm(dim=-1, keepdim=True))
    feats = torch.stack(per_template).mean(dim=0)  # [P, D]
    feats = feats / feats.norm(dim=-1, keepdim=True)
    out, start = [], 0
    for group in parts:
        chunk = feats[start:start + len(group)]
        start += len(group)
        if len(group) > 1:
            chunk = chunk.mean(dim=0, keepdim=True)
            chunk = chunk / chunk.norm(dim=-1, keepdim=True)
        out.append(chunk[0])
    return torch.stack(out)


def encode_text_reference(model: torch.nn.Module, tokens: torch.Tensor, fp16_out_proj: bool = True) -> torch.Tensor:
    """``model.encode_text`` with WeCLIP's attention (fp16 out-projection) in every text block.

    Args:
        model: ``clip.model.CLIP``.
        tokens: ``[P, context]`` token ids.

    Returns:
        ``[P, D]`` float32 (not normalised).
    """
    from clipes.backbones.vit import reference_block

    x = model.token_embedding(tokens).float() + model.positional_embedding.float()  # [P, T, W]
    x = x.permute(1, 0, 2)  # [T, P, W]
    mask = model.transformer.resblocks[0].attn_mask
    mask = None if mask is None else mask.to(x.dtype)
    for block in model.transformer.resblocks:
        x, _ = reference_block(block, x, mask, fp16_out_proj)
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


@torch.no_grad()
def encode_prompts_reference(model: torch.nn.Module, strings: list[str], template: str,
                             fp16_out_proj: bool = True) -> torch.Tensor:
    """WeCLIP's text features: one template, one prompt per string, L2-normalised, mean, normalised.

    Returns:
        ``[len(strings), D]`` float32.
    """
    if not strings:
        raise ValueError("no prompt strings to encode")
    clip = import_clip()
    device = model.token_embedding.weight.device
    feats = []
    for s in strings:  # one at a time, as the reference encodes them (same batch shapes, same rounding)
        tokens = clip.tokenize([template.format(s)]).to(device)
        f = encode_text_reference(model, tokens, fp16_out_proj).float()
        f = f / f.norm(dim=-1, keepdim=True)
        f = f.mean(dim=0)
        feats.append(f / f.norm())
    return torch.stack(feats)
