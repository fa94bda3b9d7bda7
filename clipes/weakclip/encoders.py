"""WeakCLIP's two CLIP encoders, wrapped around the modules of a CLIP that clipes' loader built.

Module and parameter names are the reference's (``backbone.*``, ``text_encoder.*`` in its state
dict), so a reference checkpoint loads as is. The blocks are clip's own ``ResidualAttentionBlock``
modules; only the loop over them is ours (drop path in the image encoder, a 13-token causal mask in
the text encoder, spec 4-5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipes.errors import UserError

OUT_INDICES = (3, 5, 7, 11)  # f1..f4 after blocks 4, 6, 8, 12 (spec 5.4)
DROP_PATH_LAYOUTS = ("token", "sample")


def drop_path(x: torch.Tensor, prob: float, training: bool, layout: str = "token") -> torch.Tensor:
    """Stochastic depth on a sequence-first ``[L, B, C]`` residual branch.

    ``token`` is the reference's (timm's ``drop_path`` on dim 0: whole token positions, shared
    across the batch, spec 5.3); ``sample`` drops whole samples (the usual meaning).
    """
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    shape = (x.shape[0], 1, 1) if layout == "token" else (1, x.shape[1], 1)
    mask = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor_()
    return x.div(keep) * mask


def run_block(block: nn.Module, x: torch.Tensor, mask: torch.Tensor | None = None, drop: float = 0.0,
              training: bool = False, layout: str = "token") -> torch.Tensor:
    """One clip ``ResidualAttentionBlock`` on ``x`` [L, B, C] with an optional mask and drop path."""
    y = block.ln_1(x)
    x = x + drop_path(block.attn(y, y, y, need_weights=False, attn_mask=mask)[0], drop, training, layout)
    return x + drop_path(block.mlp(block.ln_2(x)), drop, training, layout)


def resize_positional(table: torch.Tensor, grid: int) -> torch.Tensor:
    """The load-time resize of a ViT positional table ``[1 + g*g, C]`` to ``[1 + grid*grid, C]``
    (bilinear, align_corners False, CLS row kept first; spec 5.1)."""
    old = int(round(math.sqrt(table.shape[0] - 1)))
    width = table.shape[1]
    if old == grid:
        return table.clone()
    spatial = F.interpolate(table[1:].reshape(1, old, old, width).permute(0, 3, 1, 2), size=(grid, grid),
                            mode="bilinear")
    return torch.cat([table[:1], spatial.reshape(width, grid * grid).permute(1, 0)], dim=0)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "SyncBN":
        return nn.SyncBatchNorm(channels)
    if kind == "BN":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"adapter norm must be SyncBN or BN, not {kind!r}")


class VisionEncoder(nn.Module):
    """CLIP's image tower with the f1..f4 taps, the pyramid adapter and the dense embeddings.

    Args:
        visual: ``clip.model.VisionTransformer`` (its modules are taken over, not copied).
        input_resolution: training crop; the positional table is resized to ``crop / patch``.
        drop_path_rate: stochastic depth of the last block (block i: ``rate * i / (n - 1)``).
        drop_path_layout: ``token`` (reference) or ``sample``.
        norm: the adapter's level-1 norm, ``SyncBN`` or ``BN``.

    ``forward(x [B, 3, H, W])`` returns ``(features, global [B, E], visual [B, E, h, w], taps)``:
    ``features`` the adapter outputs ``[B, C, 4h, 4w]``, ``[B, C, 2h, 2w]``, ``[B, C, h, w]``,
    ``[B, C, h/2, w/2]`` and ``taps`` f1..f4 before it (``h = H // patch``).
    """

    def __init__(self, visual: nn.Module, input_resolution: int, drop_path_rate: float = 0.1,
                 drop_path_layout: str = "token", norm: str = "SyncBN"):
        super().__init__()
        if drop_path_layout not in DROP_PATH_LAYOUTS:
            raise ValueError(f"drop_path_layout must be one of {DROP_PATH_LAYOUTS}")
        width = visual.conv1.out_channels
        self.patch = visual.conv1.kernel_size[0]
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = nn.Parameter(
            resize_positional(visual.positional_embedding.data, input_resolution // self.patch))
        self.ln_pre, self.transformer, self.ln_post, self.proj = visual.ln_pre, visual.transformer, visual.ln_post, \
            visual.proj
        layers = len(self.transformer.resblocks)
        if layers <= max(OUT_INDICES):
            raise UserError(f"a CLIP image encoder with {layers} blocks; WeakCLIP taps blocks 4, 6, 8 and 12")
        self.drop_rates = [drop_path_rate * i / (layers - 1) for i in range(layers)]
        self.drop_path_layout = drop_path_layout
        # pyramid adapter (spec 6), PyTorch default init as the reference (init_weights never runs)
        self.fpn1 = nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, 2), _norm(norm, width),
                                  nn.GELU(), nn.ConvTranspose2d(width, width, 2, 2))
        self.fpn2 = nn.Sequential(nn.GroupNorm(1, width), nn.ConvTranspose2d(width, width, 2, 2))
        self.fpn3 = nn.GroupNorm(1, width)
        self.fpn4 = nn.Sequential(nn.GroupNorm(1, width), nn.MaxPool2d(2, 2))
        self.frozen = False  # True: the CLIP part runs without a graph (its weights are exactly frozen)

    @property
    def width(self) -> int:
        return self.conv1.out_channels

    def clip_parameters(self):
        """The parameters that come from CLIP (everything but the adapter)."""
        return [p for name, p in self.named_parameters() if not name.startswith("fpn")]

    def encode(self, x: torch.Tensor):
        """CLIP part: ``(taps f1..f4 [B, C, h, w], global [B, E], visual [B, E, h, w])``."""
        x = self.conv1(x)  # [B, C, h, w]
        b, c, h, w = x.shape
        x = x.reshape(b, c, -1).permute(0, 2, 1)  # [B, hw, C]
        x = torch.cat([self.class_embedding.to(x.dtype) + torch.zeros(b, 1, c, dtype=x.dtype, device=x.device), x],
                      dim=1)
        pos = self.positional_embedding.to(x.dtype)
        cls_pos = pos[0, :] + self.class_embedding.to(x.dtype)  # quirk: the class embedding twice
        grid = int(round(math.sqrt(pos.shape[0] - 1)))
        spatial = F.interpolate(pos[1:].reshape(1, grid, grid, c).permute(0, 3, 1, 2), size=(h, w), mode="bilinear")
        spatial = spatial.reshape(1, c, h * w).permute(0, 2, 1)
        x = x + torch.cat([cls_pos.reshape(1, 1, c), spatial], dim=1)
        x = self.ln_pre(x).permute(1, 0, 2)  # [L, B, C]
        taps = []
        for i, block in enumerate(self.transformer.resblocks):
            x = run_block(block, x, None, self.drop_rates[i], self.training, self.drop_path_layout)
            if i in OUT_INDICES:
                taps.append(x.permute(1, 0, 2)[:, 1:, :].permute(0, 2, 1).reshape(b, -1, h, w).contiguous())
        x = self.ln_post(x.permute(1, 0, 2)) @ self.proj  # [B, L, E]
        return taps, x[:, 0], x[:, 1:].reshape(b, h, w, -1).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor):
        if self.frozen:
            with torch.no_grad():
                taps, global_embedding, visual = self.encode(x)
        else:
            taps, global_embedding, visual = self.encode(x)
        features = [op(f) for op, f in zip((self.fpn1, self.fpn2, self.fpn3, self.fpn4), taps)]
        return features, global_embedding, visual, taps


class PromptTextEncoder(nn.Module):
    """CLIP's text tower with learned context vectors after SOT (spec 4).

    Args:
        clip_model: ``clip.model.CLIP`` (its text modules are taken over).
        context_length: prompt length: 1 SOT + contexts + name tokens [13].
        name_length: tokens per class name incl. SOT/EOT/padding [5].

    ``forward(tokens [K, name_length], contexts [1, n_ctx, D])`` -> ``[1, K, E]``.
    """

    def __init__(self, clip_model: nn.Module, context_length: int = 13, name_length: int = 5):
        super().__init__()
        self.transformer = clip_model.transformer
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = nn.Parameter(clip_model.positional_embedding.data[:context_length].clone())
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.context_length, self.name_length = context_length, name_length
        self.register_buffer("mask", torch.full((context_length, context_length), float("-inf")).triu_(1),
                             persistent=False)

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    @property
    def embed_dim(self) -> int:
        return self.text_projection.shape[1]

    def forward(self, tokens: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        x_text = self.token_embedding(tokens)  # [K, N1, D]
        k, n1, d = x_text.shape
        b, n2, _ = contexts.shape
        eot = (tokens.argmax(dim=-1) + n2).reshape(1, k).expand(b, k).reshape(-1)
        x_text = x_text.reshape(1, k, n1, d).expand(b, k, n1, d)
        contexts = contexts.reshape(b, 1, n2, d).expand(b, k, n2, d)
        x = torch.cat([x_text[:, :, 0:1], contexts, x_text[:, :, 1:]], dim=2).reshape(b * k, n1 + n2, d)
        x = (x + self.positional_embedding).permute(1, 0, 2)  # [L, BK, D]
        mask = self.mask.to(x.dtype)
        for block in self.transformer.resblocks:
            x = run_block(block, x, mask)
        x = self.ln_final(x.permute(1, 0, 2))
        x = x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection
        return x.reshape(b, k, -1)


def tokenize_names(names, length: int = 5) -> torch.Tensor:
    """``[K, length]`` CLIP BPE ids of ``[SOT] name [EOT]``, zero padded (spec 4.2).

    Raises:
        UserError: a name longer than ``length - 2`` tokens.
    """
    from clipes.compat import import_clip

    clip = import_clip()
    rows = []
    for name in names:
        try:
            rows.append(clip.tokenize([name], context_length=length)[0])
        except RuntimeError:
            raise UserError(f"class name {name!r} is longer than {length - 2} CLIP tokens") from None
    return torch.stack(rows).long()
