"""Decoupled co-attention and the text-to-pixel score map (spec 7-8), reference layout.

The module names are the reference's ``context_decoder.*`` keys. By default each of the three
layers of both stacks sees the *unupdated* input and only the last result is kept (the published
code: layers 1 and 2 are dead weight and get no gradient); ``chained=True`` feeds each layer the
previous one's output (DenseCLIP's design) as a documented option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with bias-free q/k/v projections and a biased output projection."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, c = q.shape
        m = k.shape[1]
        q = self.q_proj(q).reshape(b, n, self.heads, c // self.heads)
        k = self.k_proj(k).reshape(b, m, self.heads, c // self.heads)
        v = self.v_proj(v).reshape(b, m, self.heads, c // self.heads)
        attn = (torch.einsum("bnkc,bmkc->bknm", q, k) * self.scale).softmax(dim=-1)  # [B, heads, N, M]
        x = torch.einsum("bknm,bmkc->bnkc", attn, v).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm layer: self-attention, cross-attention to ``memory`` (as given), MLP."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1):
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.self_attn(y, y, y)
        x = x + self.cross_attn(self.norm2(x), memory, memory)
        return x + self.dropout(self.mlp(self.norm3(x)))


class CoAttention(nn.Module):
    """``forward(text [B, K, E], visual [B, 1 + N, E])`` -> ``(text_diff [B, K, E], visual_diff [B, 1 + N, E])``.

    Args:
        visual_dim: CLIP embedding width E.
        width: co-attention width [256].
        heads: attention heads [4].
        layers: layers per stack [3].
        dropout: [0.1].
        chained: feed each layer the previous output (not the reference).
    """

    def __init__(self, visual_dim: int, width: int = 256, heads: int = 4, layers: int = 3, dropout: float = 0.1,
                 chained: bool = False):
        super().__init__()
        self.chained = chained
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width))
        self.decoder = nn.ModuleList([DecoderLayer(width, heads, dropout) for _ in range(layers)])
        self.anti_decoder = nn.ModuleList([DecoderLayer(width, heads, dropout) for _ in range(layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, visual_dim))
        self.anti_out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, visual_dim))
        self.apply(_init)

    def forward(self, text: torch.Tensor, visual: torch.Tensor):
        memory = self.memory_proj(visual)  # [B, 1 + N, W]
        queries = self.text_proj(text)  # [B, K, W]
        text_out, visual_out = queries, memory
        for layer in self.decoder:
            text_out = layer(text_out if self.chained else queries, memory)
        for layer in self.anti_decoder:
            visual_out = layer(visual_out if self.chained else memory, queries)
        return self.out_proj(text_out), self.anti_out_proj(visual_out)


def _init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def match(text: torch.Tensor, global_embedding: torch.Tensor, visual: torch.Tensor, coattention: CoAttention,
          gamma: torch.Tensor, beta: torch.Tensor):
    """Co-attention update and the cosine score map (spec 7-8).

    Args:
        text: ``[B, K, E]`` prompt embeddings T0.
        global_embedding: ``[B, E]``; visual: ``[B, E, h, w]``.

    Returns:
        ``(score_map [B, K, h, w], text' [B, K, E], context [B, 1 + hw, E], text_diff, visual_diff)``.
    """
    b, e, h, w = visual.shape
    context = torch.cat([global_embedding.reshape(b, e, 1), visual.reshape(b, e, h * w)], dim=2).permute(0, 2, 1)
    text_diff, visual_diff = coattention(text, context)
    updated_visual = context + beta * visual_diff
    updated_text = text + gamma * text_diff
    pixels = updated_visual[:, 1:, :].permute(0, 2, 1).reshape(b, e, h, w)
    score = torch.einsum("bchw,bkc->bkhw", F.normalize(pixels, dim=1, p=2), F.normalize(updated_text, dim=2, p=2))
    return score, updated_text, context, text_diff, visual_diff


def pyramid_inputs(features, score: torch.Tensor):
    """Adapter features with the score map resized (align_corners True) and appended: ``[B, C + K, s, s]``."""
    return [torch.cat([f, F.interpolate(score, size=f.shape[2:], mode="bilinear", align_corners=True)], dim=1)
            for f in features]
