"""Class-token transformer and the GroupViT-style grouping block used by AVGN.

Per modality, AVGN runs a transformer over the concatenation ``[features; class tokens]`` (so the
tokens gather context and the features see the tokens), then a grouping block assigns every feature
to the class tokens and pools one class-aware embedding per class:

    logits[b, n, c] = <W_q LN(t_c), W_k LN(x_n)> / sqrt(D)         (dot product, scaled)
    A[b, n, :]      = assign(logits[b, n, :])                      (over TOKENS, per feature)
    g[b, c]         = W_o( sum_n A[b,n,c] W_v LN(x_n) / (sum_n A[b,n,c] + eps) ) [+ t_c]
    g[b, c]         = g[b, c] + MLP(LN(g[b, c]))

The token residual ``+ t_c`` (``token_residual=True``, GroupViT's and the paper's form) adds the
layer-normalised token, whose norm is about ``sqrt(D)``, to an input-dependent term that starts
about 30x smaller (two small-init projections, and ``eps = 1`` against a handful of audio cells).
A head reading ``g`` then sees the token first. It is kept by default (the paper's design); chapter 2
shows that with a per-class presence head and an audio presence weight that can move the audio
encoder the embeddings depend on the input anyway. With ``token_residual=False`` ``g`` is built from
the features assigned to the token only; the token still decides *which* features those are
(through the assignment logits and the pre-assignment attention).

``assign`` is ``softmax``; ``hard`` (one-hot of the argmax, straight-through: forward one-hot,
backward the softmax gradient); or ``gumbel`` (Gumbel-Softmax at temperature ``tau`` in training,
straight-through one-hot if ``gumbel_hard``; in eval the deterministic argmax, or the softmax when
``gumbel_hard`` is False — GroupViT's convention). All three pass gradients to tokens and features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["assign_tokens", "TokenTransformer", "GroupingBlock"]


# --------------------------------------------------------------------------------------------------
# attention (performance): the parameters of ``nn.TransformerEncoderLayer`` / ``nn.MultiheadAttention``
# are used as they are (same modules, same state_dict); only the forward computation is ours.
#
# Why: (1) ``nn.MultiheadAttention(batch_first=True)`` transposes its inputs to sequence-first views
# and applies the input projection to those non-contiguous views; under ``no_grad`` / inference
# mode ``torch.matmul`` then broadcasts the weight to a ``[L, D, 3D]`` batch and copies it (about
# 50-100 M elements per call at D=512: ~12 % of a CPU inference forward). Batch-first contiguous
# ``F.linear`` folds into one GEMM. (2) On the CPU the fused ``scaled_dot_product_attention``
# kernel is 2-4x slower in bf16 (forward + backward) than the plain ``matmul -> softmax -> matmul``
# for these short sequences (N + C <= ~130 tokens); on accelerators the fused kernels are kept.
# ``tests/test_models_perf_equivalence.py`` checks both paths equal the torch modules.
# --------------------------------------------------------------------------------------------------
def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over ``[B, H, L, d]`` (dropout on the weights if ``dropout_p``)."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()  # fp32 softmax also under bf16 autocast
    attn = scores.softmax(dim=-1).to(v.dtype)
    if dropout_p > 0.0:
        attn = F.dropout(attn, dropout_p)
    return torch.matmul(attn, v)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, D]`` -> ``[B, H, L, D / H]``."""
    b, n, d = x.shape
    return x.reshape(b, n, heads, d // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, L, d]`` -> ``[B, L, H * d]``."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _mha_forward(mha: nn.MultiheadAttention, query: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
    """``mha(query, kv, kv, need_weights=False)[0]`` of a batch-first ``nn.MultiheadAttention`` with
    packed input projection (``kv=None``: self-attention), without masks, bias_k/v or zero-attn."""
    d, h = mha.embed_dim, mha.num_heads
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    if kv is None:
        b, n, _ = query.shape
        qkv = F.linear(query, w, bias).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
    else:
        w_q, w_kv = w.split([d, 2 * d])
        b_q, b_kv = (None, None) if bias is None else bias.split([d, 2 * d])
        q = _heads(F.linear(query, w_q, b_q), h)
        b, n, _ = kv.shape
        k, v = F.linear(kv, w_kv, b_kv).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
    out = _attention(q, k, v, mha.dropout if mha.training else 0.0)
    return mha.out_proj(_merge_heads(out))


def _encoder_layer_forward(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` (batch-first, no masks) with :func:`_mha_forward` as the self-attention."""

    def ff(y: torch.Tensor) -> torch.Tensor:
        return layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(y)))))

    if layer.norm_first:
        x = x + layer.dropout1(_mha_forward(layer.self_attn, layer.norm1(x)))
        return x + ff(layer.norm2(x))
    x = layer.norm1(x + layer.dropout1(_mha_forward(layer.self_attn, x)))
    return layer.norm2(x + ff(x))


def _hooked(module: nn.Module) -> bool:
    """Forward hooks anywhere in ``module``: then the torch modules run as they are (ours would skip them)."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _straight_through(soft: torch.Tensor, dim: int = -1) -> torch.Tensor:
    index = soft.argmax(dim=dim, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return hard - soft.detach() + soft


def assign_tokens(
    logits: torch.Tensor,
    mode: str = "softmax",
    tau: float = 1.0,
    training: bool = False,
    gumbel_hard: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Assignment weights over the last axis (tokens) of ``logits``; see the module docstring."""
    if mode == "softmax":
        return logits.softmax(dim=-1)
    if mode == "hard":
        return _straight_through(logits.softmax(dim=-1))
    if mode == "gumbel":
        if training:
            u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
            expo = -torch.log(u.clamp_min(1e-10))  # Exp(1) sample
            gumbels = -torch.log(expo.clamp_min(1e-10))  # Gumbel(0, 1) sample
            soft = ((logits + gumbels) / tau).softmax(dim=-1)
        else:
            soft = logits.softmax(dim=-1)
        return _straight_through(soft) if gumbel_hard else soft
    raise ValueError(f"unknown assignment mode {mode!r}; use softmax, hard or gumbel")


class TokenTransformer(nn.Module):
    """Pre-norm transformer encoder over ``[feats; tokens]``; returns the two parts separately.

    ``depth=0`` is the identity.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.depth, self.heads, self.mlp_ratio = depth, heads, mlp_ratio
        if depth > 0:
            layer = nn.TransformerEncoderLayer(
                d_model=dim,
                nhead=heads,
                dim_feedforward=int(dim * mlp_ratio),
                dropout=dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
        else:
            self.encoder = None

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.encoder is None:
            return feats, tokens
        n = feats.shape[1]
        out = torch.cat([feats, tokens], dim=1)
        if _hooked(self.encoder):
            out = self.encoder(out)
        else:  # = self.encoder(out), see _mha_forward for why
            for layer in self.encoder.layers:
                out = _encoder_layer_forward(layer, out)
            if self.encoder.norm is not None:
                out = self.encoder.norm(out)
        return out[:, :n], out[:, n:]

    def extra_repr(self) -> str:
        return f"depth={self.depth}, heads={self.heads}, mlp_ratio={self.mlp_ratio}" + (" (identity)" if self.encoder is None else "")


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class GroupingBlock(nn.Module):
    """Assign features to class tokens and pool one embedding per token.

    ``forward(tokens [B, C, D], feats [B, N, D]) -> (grouped [B, C, D], assign [B, N, C])`` where
    ``assign`` rows are the assignment weights of each feature over the tokens (they sum to one).
    """

    def __init__(
        self,
        dim: int,
        num_tokens: int,
        assignment: str = "softmax",
        tau: float = 1.0,
        *,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        assign_eps: float = 1.0,
        gumbel_hard: bool = True,
        pre_assign_attn: bool = True,
        token_residual: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.token_residual = token_residual
        if assignment not in ("softmax", "hard", "gumbel"):
            raise ValueError(f"unknown assignment mode {assignment!r}; use softmax, hard or gumbel")
        self.dim = dim
        self.num_tokens = num_tokens
        self.assignment = assignment
        self.tau = tau
        self.gumbel_hard = gumbel_hard
        self.assign_eps = assign_eps
        self.scale = dim**-0.5
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_feats = nn.LayerNorm(dim)
        if pre_assign_attn:
            self.norm_pre = nn.LayerNorm(dim)
            self.pre_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        else:
            self.pre_attn = None
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm_out = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), dropout)

    def assignment_logits(self, tokens: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits [B, N, C], normalised tokens (after pre-assign attention), normalised feats)``."""
        t = self.norm_tokens(tokens)
        x = self.norm_feats(feats)
        if self.pre_attn is not None:
            if _hooked(self.pre_attn):
                t = t + self.pre_attn(self.norm_pre(t), x, x, need_weights=False)[0]
            else:
                t = t + _mha_forward(self.pre_attn, self.norm_pre(t), x)  # = self.pre_attn(., x, x)[0]
        logits = torch.einsum("bnd,bcd->bnc", self.k(x), self.q(t)) * self.scale
        return logits, t, x

    def forward(self, tokens: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.dim() != 3 or feats.dim() != 3 or tokens.shape[-1] != feats.shape[-1]:
            raise ValueError(f"expected tokens [B, C, D] and feats [B, N, D], got {tuple(tokens.shape)}, {tuple(feats.shape)}")
        logits, t, x = self.assignment_logits(tokens, feats)
        assign = assign_tokens(logits, self.assignment, self.tau, self.training, self.gumbel_hard)
        weights = assign / (assign.sum(dim=1, keepdim=True) + self.assign_eps)  # [B, N, C]
        pooled = torch.einsum("bnc,bnd->bcd", weights, self.v(x))
        grouped = self.out(pooled)
        if self.token_residual:
            grouped = grouped + t
        grouped = grouped + self.mlp(self.norm_out(grouped))
        return grouped, assign

    def residual_source(self) -> nn.Module:
        """The module whose output is the token residual ``t`` (before pre-assignment attention)."""
        return self.norm_tokens

    def extra_repr(self) -> str:
        return (
            f"assignment={self.assignment}, tau={self.tau}, tokens={self.num_tokens}, assign_eps={self.assign_eps}, "
            f"token_residual={self.token_residual}, pre_assign_attn={self.pre_attn is not None}"
        )
