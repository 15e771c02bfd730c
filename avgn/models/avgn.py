"""AVGN: Audio-Visual Grouping Network (Mo & Tian, CVPR 2023).

Pipeline (one forward pass, all ``C`` classes at once):

1. Visual encoder -> L2-normalised spatial features ``f`` ``[B, D, h, w]`` (7x7 for 224x224);
   audio encoder -> L2-normalised time-frequency features ``[B, D, f, t]`` (``audio_grouping=
   'spatial'``) or the single max-pooled vector ``[B, D]`` (``'global'``, the released code).
2. ``C`` learned class tokens ``T`` ``[C, D]`` are shared by both modalities (as in the released code).
   Per modality a transformer runs over ``[features; tokens]`` and a grouping block assigns features
   to tokens, giving class-aware embeddings ``g^a`` ``[B, C, D]`` and ``g^v`` ``[B, C, D]``.
3. Heads: presence logits ``Linear(D, 1)`` per modality, shared over classes (``audio_logits``,
   ``visual_logits`` ``[B, C]``); token classifier ``Linear(D, C)`` on the raw tokens
   (``token_logits`` ``[C, C]``).
4. Localisation map of class ``c``: ``cos(g^a_c, f_p)`` at every position ``p`` (:meth:`AVGN.localize`;
   ``target='gated'`` scores ``f_p * g^v_c`` instead, the paper's Eq.-10 target).

Which classes to show is the caller's choice (:func:`select_sources`: ground truth, or the audio
presence prediction).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from avgn.models.config import AVGNConfig
from avgn.models.encoders import AudioEncoder, VisualEncoder
from avgn.models.grouping import GroupingBlock, TokenTransformer

__all__ = ["AVGN", "select_sources"]


class AVGN(nn.Module):
    """Audio-Visual Grouping Network. See the module docstring."""

    def __init__(self, cfg: AVGNConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or AVGNConfig()
        self.cfg = cfg
        d, c = cfg.dim, cfg.num_classes
        self.visual = VisualEncoder(cfg.encoder)
        self.audio = AudioEncoder(cfg.encoder, spatial=cfg.audio_grouping == "spatial")
        self.class_tokens = nn.Parameter(torch.empty(c, d))
        nn.init.trunc_normal_(self.class_tokens, std=cfg.token_init_std, a=-2 * cfg.token_init_std, b=2 * cfg.token_init_std)
        kw: dict[str, Any] = dict(heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, dropout=cfg.dropout)
        self.audio_transformer = TokenTransformer(d, cfg.audio_depth, **kw)
        self.visual_transformer = TokenTransformer(d, cfg.visual_depth, **kw)
        gkw: dict[str, Any] = dict(
            kw, assign_eps=cfg.assign_eps, gumbel_hard=cfg.gumbel_hard, pre_assign_attn=cfg.pre_assign_attn,
            token_residual=cfg.token_residual,
        )
        self.audio_grouping = GroupingBlock(d, c, cfg.assignment, cfg.gumbel_tau, **gkw)
        self.visual_grouping = GroupingBlock(d, c, cfg.assignment, cfg.gumbel_tau, **gkw)
        self.audio_presence = PresenceHead(d, c, cfg.presence_head)
        self.visual_presence = PresenceHead(d, c, cfg.presence_head)
        self.token_classifier = nn.Linear(d, c)
        for mod in (
            self.audio_transformer,
            self.visual_transformer,
            self.audio_grouping,
            self.visual_grouping,
            self.audio_presence,
            self.visual_presence,
            self.token_classifier,
        ):
            mod.apply(_init_transformer_weights)

    # ----------------------------------------------------------------------------------------------
    def encode(
        self,
        image: torch.Tensor | None = None,
        spec: torch.Tensor | None = None,
        visual_feats: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encoders only: ``visual_map_feats``, ``visual_backbone_feats``, ``audio_global``, ``audio_map_feats``."""
        if spec is None:
            raise ValueError("AVGN needs a spectrogram spec=[B, 1, F, T]")
        vmap, vback = self.visual(image=image, feats=visual_feats)
        a_glob, a_map = self.audio(spec)
        out = {"visual_map_feats": vmap, "visual_backbone_feats": vback, "audio_global": a_glob}
        if a_map is not None:
            out["audio_map_feats"] = a_map
        return out

    def forward(
        self,
        image: torch.Tensor | None = None,
        spec: torch.Tensor | None = None,
        visual_feats: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Give ``image`` ``[B, 3, H, W]`` or cached backbone ``visual_feats``, and ``spec`` ``[B, 1, F, T]``.

        Returns a dict with ``audio_emb`` / ``visual_emb`` ``[B, C, D]`` (class-aware embeddings),
        ``visual_map_feats`` ``[B, D, h, w]`` (L2-normalised), ``audio_logits`` / ``visual_logits``
        ``[B, C]``, ``token_logits`` ``[C, C]``, ``assign_audio`` ``[B, N_a, C]``,
        ``assign_visual`` ``[B, h*w, C]``, plus ``visual_backbone_feats`` and ``audio_global``.
        """
        out = self.encode(image, spec, visual_feats)
        vmap = out["visual_map_feats"]
        bsz = vmap.shape[0]
        if self.cfg.audio_grouping == "spatial":
            xa = out["audio_map_feats"].flatten(2).transpose(1, 2)  # [B, f*t, D]
        else:
            xa = out["audio_global"][:, None]  # [B, 1, D]
        xv = vmap.flatten(2).transpose(1, 2)  # [B, h*w, D]
        tokens = self.class_tokens.unsqueeze(0).expand(bsz, -1, -1)
        fa, ta = self.audio_transformer(xa, tokens)
        audio_emb, assign_a = self.audio_grouping(ta, fa)
        fv, tv = self.visual_transformer(xv, tokens)
        visual_emb, assign_v = self.visual_grouping(tv, fv)
        out.update(
            audio_emb=audio_emb,
            visual_emb=visual_emb,
            audio_logits=self.audio_presence(audio_emb),
            visual_logits=self.visual_presence(visual_emb),
            token_logits=self.token_classifier(self.class_tokens),
            assign_audio=assign_a,
            assign_visual=assign_v,
        )
        return out

    # ----------------------------------------------------------------------------------------------
    @staticmethod
    def localize(outputs: dict[str, torch.Tensor], classes: Any = None, target: str = "features") -> torch.Tensor:
        """Cosine-similarity maps ``[B, C, h, w]`` of every class-aware audio embedding, in one einsum.

        Args:
            outputs: :meth:`forward` output.
            classes: optional class indices (list / 1-D tensor) to keep, in that order.
            target: ``features`` = ``cos(g^a_c, f_p)`` (default, the map the evaluator reads);
                ``gated`` = ``cos(g^a_c, f_p * g^v_c)`` (the paper's Eq.-10 target).
        """
        if target not in ("features", "gated"):
            raise ValueError(f"target must be 'features' or 'gated', got {target!r}")
        # Scored in fp32 even after a bf16 forward (cheap: B*C*D*h*w): bf16 cosines (8-bit mantissa)
        # would tie or swap neighbouring pixels and change the ranking metrics.
        with torch.autocast(outputs["audio_emb"].device.type, enabled=False):
            a = F.normalize(_fp32(outputs["audio_emb"]), dim=-1)
            f = _fp32(outputs["visual_map_feats"])
            if target == "features":
                maps = torch.einsum("bcd,bdhw->bchw", a, F.normalize(f, dim=1))
            else:
                g = _fp32(outputs["visual_emb"])
                num = torch.einsum("bcd,bdhw->bchw", a * g, f)
                den = torch.einsum("bcd,bdhw->bchw", g * g, f * f).clamp_min(1e-16).sqrt()
                maps = num / den
        if classes is not None:
            idx = torch.as_tensor(classes, device=maps.device, dtype=torch.long)
            maps = maps[:, idx]
        return maps

    def presence_probs(self, outputs: dict[str, torch.Tensor], modality: str = "audio") -> torch.Tensor:
        """Sigmoid of ``audio_logits`` / ``visual_logits``."""
        return torch.sigmoid(outputs[f"{modality}_logits"])

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class PresenceHead(nn.Module):
    """Presence logits ``[B, C]`` from class-aware embeddings ``[B, C, D]``.

    ``shared``: one ``Linear(D, 1)`` for every class (the released code); ``per_class``: class ``c``
    has its own weight vector and bias, ``logit_c = <w_c, g_c> + b_c`` (an einsum, no loop).
    """

    def __init__(self, dim: int, num_classes: int, kind: str = "shared") -> None:
        super().__init__()
        if kind not in ("shared", "per_class"):
            raise ValueError(f"presence head must be 'shared' or 'per_class', got {kind!r}")
        self.kind = kind
        rows = 1 if kind == "shared" else num_classes
        self.weight = nn.Parameter(torch.empty(rows, dim))
        self.bias = nn.Parameter(torch.zeros(rows))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if self.kind == "shared":
            return emb @ self.weight[0] + self.bias[0]
        return torch.einsum("bcd,cd->bc", emb, self.weight) + self.bias

    def extra_repr(self) -> str:
        return f"kind={self.kind}, classes={self.weight.shape[0] if self.kind == 'per_class' else 'shared'}, dim={self.weight.shape[1]}"


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Half / bfloat16 -> float32; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _init_transformer_weights(m: nn.Module) -> None:
    """ViT/GroupViT init (as the released code's ``_init_weights``)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def select_sources(
    maps: torch.Tensor,
    mode: str = "oracle",
    gt_classes: torch.Tensor | None = None,
    audio_probs: torch.Tensor | None = None,
    threshold: float = 0.5,
    max_sources: int | None = None,
    min_sources: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pick per-sample source maps out of all-class maps ``[B, C, h, w]``.

    Args:
        mode: ``oracle`` = the ground-truth sounding classes (``gt_classes``: multi-hot ``[B, C]`` or
            indices ``[B, S]`` padded with -1); ``predicted`` = classes with
            ``audio_probs [B, C] >= threshold``, most probable first; if fewer than ``min_sources``
            pass, the top ``min_sources`` are taken anyway. ``min_sources=0`` keeps exactly the
            classes that pass, so a sample's selection may be empty ("nothing sounds": the
            evaluation's ``predicted`` mode and ``avgn localize`` use it); the outputs then still
            have at least one column, all padding for such a sample.
        max_sources: keep at most this many per sample (most probable first for ``predicted``; the
            given order for ``oracle``).

    Returns:
        ``(selected [B, S, h, w], classes [B, S] padded with -1, mask [B, S])``; padded maps are 0.
    """
    bsz, num_classes = maps.shape[:2]
    if mode == "oracle":
        if gt_classes is None:
            raise ValueError("mode='oracle' needs gt_classes")
        gt = gt_classes.to(maps.device)
        if gt.dim() == 2 and gt.shape[1] == num_classes and gt.dtype != torch.long:
            from avgn.losses import sources_from_multihot

            classes, mask = sources_from_multihot(gt)
        else:
            classes = gt.long()
            mask = classes >= 0
    elif mode == "predicted":
        if audio_probs is None:
            raise ValueError("mode='predicted' needs audio_probs")
        probs = audio_probs.to(maps.device)
        order = probs.argsort(dim=1, descending=True)
        sorted_p = probs.gather(1, order)
        rank = torch.arange(num_classes, device=maps.device)[None]
        mask = (sorted_p >= threshold) | (rank < min_sources)
        classes = torch.where(mask, order, torch.full_like(order, -1))
        s = max(int(mask.sum(dim=1).max().item()), 1)
        classes, mask = classes[:, :s], mask[:, :s]
    else:
        raise ValueError(f"mode must be 'oracle' or 'predicted', got {mode!r}")
    if max_sources is not None:
        classes, mask = classes[:, :max_sources], mask[:, :max_sources]
    safe = classes.clamp_min(0)
    selected = maps[torch.arange(bsz, device=maps.device)[:, None], safe]
    selected = selected * mask[:, :, None, None].to(selected.dtype)
    return selected, classes, mask
