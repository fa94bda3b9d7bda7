"""Softmax-GradCAM on the last block of a CLIP ViT (CLIP-ES, spec sections 3-4).

For an image with present classes k = 1..K the *target* is the softmax probability of class k
among [present classes, then all background prompts]. The *activation* is the output of the last
block's ``ln_1`` on the patch tokens, ``A [N, C]``; the GradCAM weights are the spatial mean of
d(target)/dA, ``w [C]``; the CAM is ``ReLU(A @ w)`` on the ``h x w`` patch grid, min-max normalised
twice with the reference's 1e-7 epsilon.

Two ways to get the weights, equal up to float rounding:

* ``"autograd"``: one backward pass per class through the last block, as the reference does.
* ``"analytic"`` (default): the last block runs once and the *spatial mean* of the gradient is
  computed in closed form for all classes together. Because only the mean over patch tokens is
  needed, sums are pushed through the attention (the key path vanishes, since softmax rows are
  shift-invariant; the value path reduces to weighted row sums) and the LayerNorm Jacobians are
  low-rank, so the c_proj backward is shared across classes. What remains per class is one
  ``[N, 4C] x [4C, C]`` product and one ``P^T G`` product, about 3-4% of a forward pass.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from clipes.backbones.vit import DenseViT, fp16_out_projection, reference_attention

GRAD_METHODS = ("analytic", "autograd")
CAM_EPS = 1e-7  # the reference's epsilon in ``scale_cam_image``


def minmax_normalize(cam: torch.Tensor, eps: float = CAM_EPS) -> torch.Tensor:
    """``cam -= min; cam /= (eps + max)`` per map, over all but the first dim.

    Args:
        cam: ``[K, ...]`` float maps.

    Returns:
        Same shape. An all-zero map stays all zero.
    """
    flat = cam.reshape(cam.shape[0], -1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    flat = flat / (eps + flat.max(dim=1, keepdim=True).values)
    return flat.reshape(cam.shape)


def cam_from_weights(weights: torch.Tensor, activation: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """GradCAM maps from channel weights: ``ReLU(A @ w)`` on the grid, min-max normalised twice.

    Args:
        weights: ``[K, C]`` GradCAM weights.
        activation: ``[N, C]`` patch-token activations, N = h * w.

    Returns:
        ``[K, h, w]`` maps in [0, 1) (twice normalised, as the reference's ``scale_cam_image``).
    """
    cam = torch.relu(weights @ activation.t())  # [K, N]
    return minmax_normalize(minmax_normalize(cam.reshape(-1, h, w)))


class SoftmaxTarget:
    """The CLIP-ES score head: pooled patch feature -> softmax over [present fg, background].

    Args:
        fg_features: ``[K, D]`` text features of the classes present in the image.
        bg_features: ``[Bg, D]`` text features of the background prompts.
        logit_scale: CLIP's learned ``logit_scale`` (log of the temperature inverse).
        proj: the visual projection ``[C, D]``.
    """

    def __init__(self, fg_features: torch.Tensor, bg_features: torch.Tensor, logit_scale: torch.Tensor,
                 proj: torch.Tensor):
        text = torch.cat([fg_features, bg_features], dim=0)
        self.text = text / text.norm(dim=-1, keepdim=True)  # [K+Bg, D]
        self.scale = logit_scale.exp()
        self.proj = proj
        self.num_fg = fg_features.shape[0]

    def __call__(self, pooled: torch.Tensor) -> torch.Tensor:
        """Scores ``[K+Bg]`` from the mean-pooled ``ln_post`` output ``pooled [C]``."""
        feature = pooled @ self.proj  # [D]
        feature = feature / feature.norm(dim=-1, keepdim=True)
        return (self.scale * feature @ self.text.t()).softmax(dim=-1)

    def scores_and_grads(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[K+Bg]`` and d(score k)/d(pooled) for each present class, ``[K, C]``."""
        pooled = pooled.detach().requires_grad_(True)
        with torch.enable_grad():
            scores = self(pooled)
            grads = [torch.autograd.grad(scores[k], pooled, retain_graph=k + 1 < self.num_fg)[0]
                     for k in range(self.num_fg)]
        return scores.detach(), torch.stack(grads)


@dataclass
class CamResult:
    """Softmax-GradCAM of one image.

    Attributes:
        cams: ``[K, h, w]`` float32, normalised (spec section 4), row k for the k-th present class.
        scores: ``[K+Bg]`` softmax over present classes then background prompts.
        weights: ``[K, C]`` GradCAM channel weights.
        attention: ``[N, N]`` mean attention of the last blocks over patch tokens (what CAA
            needs), when asked for.
    """

    cams: torch.Tensor
    scores: torch.Tensor
    weights: torch.Tensor
    attention: torch.Tensor | None = None


def _layer_norm_with_stats(ln: torch.nn.LayerNorm, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """LayerNorm output with its per-token mean and 1/sigma, ``[..., C], [..., 1], [..., 1]``."""
    out, mean, rstd = torch.native_layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    return out, mean, rstd


class LastBlockPass:
    """The last residual block run once, batch-first, keeping what the analytic backward needs.

    Args:
        vit: the wrapped tower.
        x: ``[T, B, C]`` input of the last block.
        fp16_out_proj: run the attention out-projection in fp16, forward and backward, as WeCLIP's
            reference does (CLIP-ES: off).
    """

    def __init__(self, vit: DenseViT, x: torch.Tensor, fp16_out_proj: bool = False):
        block = vit.blocks[-1]
        attn = block.attn
        self.block, self.visual = block, vit.visual
        self.fp16_out_proj = fp16_out_proj
        heads = vit.num_heads
        x = x.permute(1, 0, 2)  # [B, T, C]
        b, t, c = x.shape
        d = c // heads
        self.heads, self.head_dim = heads, d
        self.activation = block.ln_1(x)  # A: [B, T, C]
        qkv = F.linear(self.activation, attn.in_proj_weight, attn.in_proj_bias)  # [B, T, 3C]
        q, k, v = qkv.view(b, t, 3, heads, d).permute(2, 0, 3, 1, 4)  # each [B, H, T, d]
        self.q_scaled = q * (1.0 / d) ** 0.5
        self.k, self.v = k, v
        self.probs = torch.softmax(self.q_scaled @ k.transpose(-2, -1), dim=-1)  # P: [B, H, T, T]
        self.heads_out = self.probs @ v  # O: [B, H, T, d]
        merged = self.heads_out.permute(0, 2, 1, 3).reshape(b, t, c)
        out = fp16_out_projection(attn, merged) if fp16_out_proj else attn.out_proj(merged)
        self.h = x + out  # [B, T, C]
        ln2_out, self.ln2_mean, self.ln2_rstd = _layer_norm_with_stats(block.ln_2, self.h)
        self.fc = block.mlp.c_fc(ln2_out)  # z: [B, T, 4C]
        self.gate = torch.sigmoid(1.702 * self.fc)
        self.act = self.fc * self.gate  # QuickGELU(z)
        self.y = self.h + block.mlp.c_proj(self.act)  # [B, T, C]
        post, self.post_mean, self.post_rstd = _layer_norm_with_stats(self.visual.ln_post, self.y)
        self.pooled = post[:, 1:].mean(dim=1)  # [B, C]

    def mean_activation_grad(self, i: int, d_pooled: torch.Tensor) -> torch.Tensor:
        """Spatial mean over patch tokens of d(target)/dA for image ``i`` and K targets.

        Args:
            i: image index in the batch.
            d_pooled: ``[K, C]`` gradients of the K targets w.r.t. the pooled ``ln_post`` output.

        Returns:
            ``[K, C]`` GradCAM weights.
        """
        block, visual = self.block, self.visual
        heads, d = self.heads, self.head_dim
        kk, c = d_pooled.shape
        post_rstd = self.post_rstd[i, 1:]  # 1/sigma: [N, 1]
        post_hat = (self.y[i, 1:] - self.post_mean[i, 1:]) * post_rstd  # [N, C]
        n = post_hat.shape[0]
        # ln_post + mean over patches: dy_n = (v - mean v - x_n * <v, x_n>/C) / sigma_n, same v for all n.
        v = d_pooled * visual.ln_post.weight / n  # [K, C]
        v_mean = v.mean(dim=-1)  # [K]
        v_dot = post_hat @ v.t() / c  # [N, K]
        dy = (v - v_mean[:, None])[None] - v_dot[..., None] * post_hat[:, None]
        dy.mul_(post_rstd[..., None])  # [N, K, C]
        # c_proj backward by linearity: only post_hat @ W2 is per token, shared by all classes;
        # QuickGELU' and 1/sigma are folded into it, so each class costs two passes over [N, 4C].
        w2 = block.mlp.c_proj.weight  # [C, 4C]
        gate = self.gate[i, 1:]  # [N, 4C]
        slope = torch.addcmul(gate, self.act[i, 1:], 1.0 - gate, value=1.702).mul_(post_rstd)  # QuickGELU'/sigma
        shared = (post_hat @ w2).mul_(slope)  # [N, 4C]
        base = v @ w2 - v_mean[:, None] * w2.sum(dim=0)  # [K, 4C]
        d_fc = base[None] * slope[:, None]  # [N, K, 4C]
        d_fc.addcmul_(v_dot[..., None], shared[:, None], value=-1.0)
        d_ln2 = (d_fc @ block.mlp.c_fc.weight).mul_(block.ln_2.weight)  # [N, K, C]
        ln2_rstd = self.ln2_rstd[i, 1:]
        ln2_hat = (self.h[i, 1:] - self.ln2_mean[i, 1:]) * ln2_rstd  # [N, C]
        correction = d_ln2.mean(dim=-1, keepdim=True) + ln2_hat[:, None] * (d_ln2 * ln2_hat[:, None]).mean(dim=-1, keepdim=True)
        dh = dy.add_(d_ln2.sub_(correction).mul_(ln2_rstd[..., None]))  # [N, K, C]
        # Attention. G: gradient at each head's output for query rows 1..N (the CLS row gets none).
        w_out = block.attn.out_proj.weight  # [C, C]
        if self.fp16_out_proj:
            # autograd's backward of the fp16 out-projection is an fp16 product; on the CPU that kernel
            # is 5-8x slower than fp32, so the same fp16-rounded operands are multiplied in fp32 and the
            # result rounded to fp16 (equal up to the accumulation order: 1 fp16 ulp in ~0.1% of entries).
            g = (dh.half().float() @ w_out.half().float()).half().float()
        else:
            g = dh @ w_out
        g = g.view(n, kk, heads, d).permute(2, 0, 1, 3)  # [H, N, K, d]
        probs, v_heads = self.probs[i], self.v[i]  # [H, T, T], [H, T, d]
        p_rows = probs[:, 1:]  # [H, N, T]
        r = (g * self.heads_out[i][:, 1:, None]).sum(dim=-1)  # <G_n, O_n>: [H, N, K]
        sum_dv = torch.einsum("hn,hnkd->hkd", 1.0 - p_rows[..., 0], g)  # sum over patch keys of dV
        # One pass over P for P^T G and P^T r.
        stacked = torch.bmm(p_rows.transpose(1, 2), torch.cat([g.reshape(heads, n, kk * d), r], dim=-1))
        pt_g, pt_r = stacked[..., :kk * d].view(heads, -1, kk, d), stacked[..., kk * d:]  # [H, T, K, d], [H, T, K]
        col = (v_heads[:, :, None] * pt_g).sum(dim=-1) - pt_r  # column sums of dS over patch rows: [H, T, K]
        sum_dq = torch.bmm(col.transpose(1, 2), self.k[i]) * (1.0 / d) ** 0.5  # [H, K, d]
        ds_cls = p_rows[..., :1] * ((g * v_heads[:, :1, None]).sum(dim=-1) - r)  # dS[:, 0]: [H, N, K]
        sum_dk = -torch.bmm(ds_cls.transpose(1, 2), self.q_scaled[i, :, 1:])  # [H, K, d]
        sum_dv, sum_dq, sum_dk = (t.transpose(0, 1).reshape(kk, c) for t in (sum_dv, sum_dq, sum_dk))
        w_in = block.attn.in_proj_weight  # [3C, C]
        total = sum_dq @ w_in[:c] + sum_dk @ w_in[c:2 * c] + sum_dv @ w_in[2 * c:]
        return total / n


def autograd_weights(vit: DenseViT, x: torch.Tensor, target: SoftmaxTarget,
                     classes: list[int] | None = None, fp16_out_proj: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference-style weights for one image: one last-block forward, one backward per class.

    Args:
        x: ``[T, 1, C]`` input of the last block.
        target: the score head.
        classes: indices of the present classes to differentiate (default: all of them).
        fp16_out_proj: WeCLIP's attention (fp16 out-projection) instead of clip's.

    Returns:
        ``(scores [K+Bg], weights [len(classes), C])``.
    """
    block, visual = vit.blocks[-1], vit.visual
    classes = list(range(target.num_fg)) if classes is None else list(classes)
    with torch.enable_grad():
        activation = block.ln_1(x).detach().requires_grad_(True)  # [T, 1, C]
        if fp16_out_proj:
            out = reference_attention(block.attn, activation)[0]
        else:
            out = block.attn(activation, activation, activation, need_weights=True)[0]
        h = x + out
        y = h + block.mlp(block.ln_2(h))
        pooled = visual.ln_post(y)[1:, 0].mean(dim=0)  # [C]
        scores = target(pooled)
        weights = []
        for j, k in enumerate(classes):
            grad = torch.autograd.grad(scores[k], activation, retain_graph=j + 1 < len(classes))[0]
            weights.append(grad[1:, 0].mean(dim=0))
    return scores.detach(), torch.stack(weights)


def class_weights(vit: DenseViT, x: torch.Tensor, i: int, target: SoftmaxTarget, last: LastBlockPass | None = None,
                  fp16_out_proj: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GradCAM weights of every present class of image ``i``.

    Args:
        x: ``[T, B, C]`` input of the last block.
        target: the image's score head.
        last: the batch's :class:`LastBlockPass` for the closed form; None: per-class autograd.
        fp16_out_proj: the autograd path with WeCLIP's fp16 out-projection.

    Returns:
        ``(scores [K+Bg], weights [K, C], activation [N, C])``.
    """
    if last is not None:
        scores, d_pooled = target.scores_and_grads(last.pooled[i])
        return scores, last.mean_activation_grad(i, d_pooled), last.activation[i, 1:]
    scores, weights = autograd_weights(vit, x[:, i:i + 1], target, fp16_out_proj=fp16_out_proj)
    return scores, weights, vit.blocks[-1].ln_1(x[1:, i])


def softmax_gradcam(
    vit: DenseViT,
    images: torch.Tensor,
    fg_features: list[torch.Tensor],
    bg_features: torch.Tensor,
    logit_scale: torch.Tensor,
    method: str = "analytic",
    quirk_77_tokens: bool = True,
    autocast: Callable | None = None,
    attention_layers: int = 0,
) -> list[CamResult]:
    """Softmax-GradCAM for a batch of same-size images, all classes from one forward pass.

    Args:
        vit: wrapped CLIP image tower.
        images: ``[B, 3, H, W]`` normalised, H and W multiples of the patch size.
        fg_features: per image, ``[K_b, D]`` text features of its present classes (K_b >= 1).
        bg_features: ``[Bg, D]`` background text features.
        logit_scale: CLIP's ``logit_scale`` parameter.
        method: ``"analytic"`` or ``"autograd"`` (see module docstring).
        quirk_77_tokens: reproduce the reference's text-length test: an image with exactly 77
            tokens runs all blocks before the (repeated) last block.
        autocast: optional context-manager factory for reduced precision in the no-grad blocks.
        attention_layers: also return the mean attention of this many final blocks (0: none),
            as :meth:`DenseViT.mean_attention` computes it, at no extra forward pass.

    Returns:
        One :class:`CamResult` per image.
    """
    if method not in GRAD_METHODS:
        raise ValueError(f"unknown gradient method {method!r}; expected one of {GRAD_METHODS}")
    h, w = vit.grid(images.shape[-2], images.shape[-1])
    with torch.no_grad():
        x = vit.embed(images)  # [T, B, C]
        order = vit.schedule(x.shape[0], quirk_77_tokens)
        if not 0 <= attention_layers <= len(order):
            raise ValueError(f"cannot average the last {attention_layers} of {len(order)} blocks")
        frozen_attention = max(attention_layers - 1, 0)
        with autocast() if autocast is not None else contextlib.nullcontext():
            x, attn_sum = vit.run_schedule(x, order[:-1], attention_last=frozen_attention)  # all but the last
        x = x.float()
        proj = vit.visual.proj
        results = []
        if method == "analytic":
            last = LastBlockPass(vit, x)
        attention = None
        if attention_layers:
            final = last.probs.mean(dim=1) if method == "analytic" else DenseViT.block_attention(
                vit.blocks[-1], x)[1]  # [B, T, T]
            attention = (final if attn_sum is None else attn_sum.float() + final)[:, 1:, 1:] / attention_layers
        for i, fg in enumerate(fg_features):
            target = SoftmaxTarget(fg, bg_features, logit_scale, proj)
            scores, weights, activation = class_weights(vit, x, i, target, last if method == "analytic" else None)
            results.append(CamResult(cams=cam_from_weights(weights, activation, h, w), scores=scores,
                                     weights=weights, attention=None if attention is None else attention[i]))
    return results
