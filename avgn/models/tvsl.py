"""T-VSL: text-guided visual sound source localization in mixtures (Mahmud, Tian & Marculescu, CVPR 2024).

On this project's encoders, with frozen text anchors (:mod:`avgn.text`) in place of AudioCLIP:

1. Tokens in the text space (``E = 384``): the visual encoder's 1x1 projection of the frozen
   EfficientNet-Lite0 features gives image tokens ``x^v`` ``[B, N, E]`` (``N = h*w``: 49, or 98 for
   a side-by-side duet); the audio ResNet's ``layer4`` time-frequency map through a 1x1 conv gives
   audio tokens ``x^a`` ``[B, M, E]``; both L2-normalised per token.
2. Per class ``c`` with anchor ``t_c`` (``T`` ``[C, E]``, a frozen buffer): token weights
   ``m_c = weight(x t_c)`` over the tokens (``l2``: divided by their L2 norm, the public code;
   ``softmax``), class feature ``f_c = mean_n m_cn x_n`` (``l2``) or ``sum_n m_cn x_n``
   (``softmax``), then a residual MLP head ``h(f) = w f + (1 - w) MLP(f)`` (``w`` learned, init 1):
   class-aware ``audio_emb`` / ``visual_emb`` ``[B, C, E]``.
3. Multi-label logits ``[B, C]``: ``s_ml cos(g, t_c) + b_ml`` with ``g`` the pooled audio tokens
   through a residual head (``ml_input='audio'``) or an MLP of pooled image and audio tokens
   (``'fused'``, the public code). Scored against anchors, so they exist for unseen classes too.
4. Map of class ``c``: ``cos(h^v(x^v_p), audio_emb_c)`` at every image token ``p`` — the image
   token through the visual head against the class-aware audio feature; high = sounding (no
   inversion, unlike the public evaluation).

Losses (:meth:`TVSL.loss`), on the ``(sample, class)`` pairs of the sounding sources and only
against the anchors of the training classes (``seen``): image->text and audio->text
cross-entropy with a learned scale clamped to ``[1, scale_max]``; multi-label BCE; symmetric
InfoNCE between the audio and image class features of the pairs. Weighted sum (all 1).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgn.models.config import TVSLConfig
from avgn.models.encoders import AudioEncoder, VisualEncoder

__all__ = ["TVSL", "ResidualHead", "tvsl_losses", "weighted_class_features"]


class ResidualHead(nn.Module):
    """``w x + (1 - w) MLP(x)`` with ``MLP = Linear(E, H) -> GELU -> Linear(H, E)`` and a learned
    scalar ``w`` initialised to 1 (the head starts as the identity), on ``[..., E]``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.w * x + (1 - self.w) * self.mlp(x)


def weighted_class_features(tokens: Tensor, anchors: Tensor, weighting: str = "l2", tau: float = 0.1) -> tuple[Tensor, Tensor]:
    """Text-conditioned pooling: ``tokens [B, N, E]``, ``anchors [C, E]`` -> ``(features [B, C, E],
    weights [B, C, N])``. ``l2``: ``m = s / ||s||`` over the tokens, features = ``mean_n m_n x_n``;
    ``softmax``: ``m = softmax(s / tau)``, features = ``sum_n m_n x_n``; ``s = x t_c``."""
    s = torch.einsum("bne,ce->bcn", tokens, anchors)
    if weighting == "l2":
        m = F.normalize(s, dim=-1)
        return torch.einsum("bcn,bne->bce", m, tokens) / tokens.shape[1], m
    if weighting == "softmax":
        m = torch.softmax(s / tau, dim=-1)
        return torch.einsum("bcn,bne->bce", m, tokens), m
    raise ValueError(f"weighting must be 'l2' or 'softmax', got {weighting!r}")


class TVSL(nn.Module):
    """T-VSL (see the module docstring). ``anchors`` ``[C, 384]``: the text anchors of
    ``cfg.class_names`` (computed with :func:`avgn.text.text_anchors` when not given)."""

    def __init__(self, cfg: TVSLConfig | None = None, anchors: Tensor | None = None) -> None:
        super().__init__()
        cfg = cfg or TVSLConfig()
        self.cfg = cfg
        if anchors is None:
            from avgn.text import text_anchors

            anchors = text_anchors(cfg.class_names, cfg.templates, cfg.anchor_cache, encoder=cfg.text_encoder, checkpoint=cfg.audioclip_path)
        e = cfg.text_dim
        if tuple(anchors.shape) != (cfg.num_classes, e):
            raise ValueError(f"anchors must be [{cfg.num_classes}, {e}] (one per class name), got {tuple(anchors.shape)}")
        self.register_buffer("anchors", F.normalize(anchors.float(), dim=-1).clone())
        self.register_buffer("seen", torch.tensor([c in cfg.seen_classes for c in cfg.class_names]))
        self.visual = VisualEncoder(cfg.encoder)
        self.audio = AudioEncoder(cfg.encoder, spatial=True)
        self.visual_head = ResidualHead(e, cfg.dim)
        self.audio_head = ResidualHead(e, cfg.dim)
        if cfg.ml_input == "audio":
            self.ml_head: nn.Module = ResidualHead(e, cfg.dim)
        else:
            self.ml_head = nn.Sequential(nn.Linear(2 * e, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, e))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(cfg.scale_init)))
        self.ml_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.ml_bias = nn.Parameter(torch.tensor(-2.0))

    @property
    def scale(self) -> Tensor:
        """The text-classification logit scale, ``exp(logit_scale)`` clamped to ``[1, scale_max]``."""
        return self.logit_scale.exp().clamp(1.0, self.cfg.scale_max)

    def forward(self, image: Tensor | None = None, spec: Tensor | None = None, visual_feats: Tensor | None = None,
                anchors: Tensor | None = None) -> dict[str, Tensor]:
        """``image [B, 3, H, W]`` or cached ``visual_feats``, and ``spec [B, 1, F, T]``; ``anchors``
        replaces the model's own (e.g. other prompt templates) at inference.

        Returns ``visual_map_feats [B, E, h, w]`` (image tokens), ``audio_emb`` / ``visual_emb``
        ``[B, C, E]`` (class-aware features after the heads), ``audio_weights [B, C, M]``,
        ``visual_weights [B, C, N]``, ``ml_logits [B, C]``, ``anchors [C, E]``."""
        if spec is None:
            raise ValueError("T-VSL needs a spectrogram spec=[B, 1, F, T]")
        t = self.anchors if anchors is None else F.normalize(anchors.to(self.anchors), dim=-1)
        vmap, _ = self.visual(image=image, feats=visual_feats)  # [B, E, h, w], unit tokens
        _, amap = self.audio(spec)
        assert amap is not None
        xv = vmap.flatten(2).transpose(1, 2)  # [B, N, E]
        xa = amap.flatten(2).transpose(1, 2)  # [B, M, E]
        kw = dict(weighting=self.cfg.token_weighting, tau=self.cfg.weight_tau)
        fv, wv = weighted_class_features(xv, t, **kw)
        fa, wa = weighted_class_features(xa, t, **kw)
        if self.cfg.ml_input == "audio":
            g = self.ml_head(xa.mean(1))
        else:
            g = self.ml_head(torch.cat([xv.mean(1), xa.mean(1)], dim=-1))
        ml = self.ml_scale.exp() * F.normalize(g, dim=-1) @ t.T + self.ml_bias
        return {
            "visual_map_feats": vmap,
            "audio_emb": self.audio_head(fa),
            "visual_emb": self.visual_head(fv),
            "audio_weights": wa,
            "visual_weights": wv,
            "ml_logits": ml,
            "anchors": t,
        }

    def text_logits(self, emb: Tensor, anchors: Tensor) -> Tensor:
        """``scale * cos(emb, anchors)``: ``[..., E]`` x ``[K, E]`` -> ``[..., K]``."""
        return self.scale * F.normalize(emb, dim=-1) @ anchors.T

    def localize(self, outputs: Mapping[str, Tensor]) -> Tensor:
        """Maps ``[B, C, h, w]``: ``cos(h^v(x^v_p), audio_emb_c)`` (fp32)."""
        vmap = outputs["visual_map_feats"].float()
        b, e, h, w = vmap.shape
        with torch.autocast(vmap.device.type, enabled=False):
            tok = F.normalize(self.visual_head(vmap.flatten(2).transpose(1, 2)).float(), dim=-1)  # [B, N, E]
            a = F.normalize(outputs["audio_emb"].float(), dim=-1)  # [B, C, E]
            maps = torch.einsum("bce,bne->bcn", a, tok)
        return maps.reshape(b, -1, h, w)

    def loss(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The four losses against the seen classes' anchors (:func:`tvsl_losses`)."""
        return tvsl_losses(outputs, labels, self.seen, self.scale, self.cfg)


def tvsl_losses(outputs: Mapping[str, Tensor], labels: Tensor, seen: Tensor, scale: Tensor, cfg: Any) -> tuple[Tensor, dict[str, Tensor]]:
    """T-VSL's loss on one forward output.

    Args:
        outputs: ``audio_emb`` / ``visual_emb`` ``[B, C, E]``, ``ml_logits`` ``[B, C]``, ``anchors`` ``[C, E]``.
        labels: multi-hot ``[B, C]`` of the sounding classes.
        seen: bool ``[C]``: the classes training may use (targets and negatives); a sounding
            class that is not seen is an error.
        scale: the (clamped) logit scale of the text classification.
        cfg: weights ``w_img, w_aud, w_ml, w_cnt`` and the contrastive ``tau``.

    Returns:
        ``(total, {"img", "aud", "ml", "cnt", "total"})`` (parts detached). ``img`` / ``aud``: mean
        cross-entropy over the sounding ``(b, c)`` pairs of ``scale * cos(feature_bc, T_seen)`` with
        target ``c``; ``ml``: BCE of ``ml_logits[:, seen]``; ``cnt``: symmetric InfoNCE between the
        pairs' audio and image features (temperature ``tau``; 0 with a single pair).
    """
    labels = labels.to(outputs["ml_logits"].dtype)
    pos = labels > 0.5
    if (pos & ~seen[None]).any():
        raise ValueError("a sounding class is not among the training classes (seen): unseen classes must not be trained on")
    t_seen = outputs["anchors"][seen]
    remap = torch.cumsum(seen.long(), 0) - 1  # class index -> index among the seen anchors
    bi, ci = pos.nonzero(as_tuple=True)
    target = remap[ci]
    fa = outputs["audio_emb"][bi, ci].float()
    fv = outputs["visual_emb"][bi, ci].float()
    a_logits = scale * F.normalize(fa, dim=-1) @ t_seen.float().T
    v_logits = scale * F.normalize(fv, dim=-1) @ t_seen.float().T
    l_aud = F.cross_entropy(a_logits, target)
    l_img = F.cross_entropy(v_logits, target)
    l_ml = F.binary_cross_entropy_with_logits(outputs["ml_logits"][:, seen].float(), labels[:, seen].float())
    if len(bi) > 1:
        sim = F.normalize(fa, dim=-1) @ F.normalize(fv, dim=-1).T / cfg.tau
        idx = torch.arange(len(bi), device=sim.device)
        l_cnt = 0.5 * (F.cross_entropy(sim, idx) + F.cross_entropy(sim.T, idx))
    else:
        l_cnt = fa.sum() * 0.0
    total = cfg.w_img * l_img + cfg.w_aud * l_aud + cfg.w_ml * l_ml + cfg.w_cnt * l_cnt
    parts = {"img": l_img, "aud": l_aud, "ml": l_ml, "cnt": l_cnt, "total": total}
    return total, {k: v.detach() for k, v in parts.items()}
