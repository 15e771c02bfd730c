"""AVGN (Mo & Tian, CVPR 2023) as a method: class-aware maps and its own source selection.

One forward pass gives the maps of all ``C`` classes (:meth:`avgn.methods.avgn.AVGN.localize`) and the
audio presence probabilities; ``predicted`` selection keeps the classes whose probability reaches
the run's validation-chosen threshold (:func:`avgn.models.selection.select_sources`). The map is the
similarity the model was trained on (:func:`map_target`). Per epoch the trainer also logs the raw
token accuracy and the embedding-dependence control (:func:`embedding_dependence_summary`).

The model
---------

AVGN: Audio-Visual Grouping Network (Mo & Tian, CVPR 2023).

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

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from avgn.methods.base import Method, model_inputs
from avgn.methods.registry import register_method

if TYPE_CHECKING:  # pragma: no cover
    from avgn.config import Profile
from dataclasses import dataclass, field

import torch.nn.functional as F

from avgn.losses import presence_bce_loss, sources_from_multihot, token_ce_loss
from avgn.models.config import ASSIGNMENTS, AUDIO_GROUPING, LOC_TARGETS, EncoderConfig, _sync_encoder_dim
from avgn.models.encoders import AudioEncoder, AudioVisualModel
from avgn.models.grouping import GroupingBlock, TokenTransformer

__all__ = ['AVGNMethod', 'map_target', 'embedding_dependence', 'embedding_dependence_summary', 'AVGN', 'AVGNConfig', 'PAPER_DESIGN', 'avgn_localization_loss', 'avgn_loss_terms', 'avgn_pair_scores', 'avgn_total_loss']


#: The paper's (and released code's) values of the design fields this book varies; :class:`AVGNConfig`'s
#: defaults depart from them in ``presence_head`` and ``w_audio_cls``.
PAPER_DESIGN: dict[str, Any] = {"token_residual": True, "presence_head": "shared", "w_audio_cls": 1.0}


@dataclass(frozen=True)
class AVGNConfig:
    """AVGN (class tokens + per-modality transformer + grouping + per-source contrastive loss).

    Attributes:
        num_classes: ``C``, number of learned class tokens (= label set size).
        dim: ``D``; also written into ``encoder.dim``.
        depth: transformer layers per modality (``depth_audio``/``depth_visual`` override it).
        heads / mlp_ratio / dropout: transformer and grouping-block settings.
        assignment: ``softmax`` (soft assignment, the public code's default ``attn_assign soft``),
            ``hard`` (straight-through one-hot argmax, softmax gradients, train and eval) or
            ``gumbel`` (Gumbel-Softmax with temperature ``gumbel_tau`` while training, straight-
            through hard if ``gumbel_hard``; deterministic argmax (or softmax if not
            ``gumbel_hard``) in eval — GroupViT's convention).
        assign_eps: each class embedding is ``sum_n w_nc v_n / (sum_n w_nc + assign_eps)``
            (GroupViT uses 1.0: a token that receives almost no feature stays near 0).
        pre_assign_attn: GroupViT/AVGN grouping blocks first let tokens cross-attend to features.
        token_residual: add the (layer-normalised) class token to its grouped embedding, as
            GroupViT and the paper do (default). On its own it dominates the input-dependent term
            (:mod:`avgn.models.grouping`); with the per-class presence head and the audio presence
            weight below the embeddings depend on the input again (chapter 2).
        presence_head: ``per_class`` (a weight vector and bias per class; default) or ``shared``
            (one ``Linear(D, 1)`` for every class, the released code). A shared head sees the same
            pooled audio for every class while the assignment is still uniform, so its gradient
            can only move the number of present classes, not which ones (chapter 2).
        tau: contrastive temperature (paper 0.03).
        loc_target: ``paper`` = Eq. 10, audio class embedding ``g^a_n`` scored against
            ``f_p * g^v_n`` (feature gated by the class-aware visual embedding); ``public`` = the
            released code, ``g^a_n`` scored against the raw visual features ``f_p``.
        audio_grouping: ``spatial`` = group over the audio ResNet's time-frequency cells
            (paper description), ``global`` = group over the single max-pooled audio vector
            (released code).
        token_init_std: class tokens ~ truncated normal (the released code initialises them to
            zeros; we do not, so tokens start distinguishable).
        w_loc / w_token / w_audio_cls / w_visual_cls: loss weights (released code: all 1). The
            default ``w_audio_cls = 100`` departs from it: at initialisation the localisation loss
            sends a gradient tens of times larger than the audio presence loss into the audio
            encoder (chapter 2 measures it on the cpu profile), so with equal weights the encoder
            never learns which classes sound. :meth:`paper` restores the released weights and the shared head.
    """

    num_classes: int = 37
    dim: int = 512
    depth: int = 3
    depth_audio: int | None = None
    depth_visual: int | None = None
    heads: int = 8
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    assignment: str = "softmax"
    gumbel_tau: float = 1.0
    gumbel_hard: bool = True
    assign_eps: float = 1.0
    pre_assign_attn: bool = True
    token_residual: bool = True
    presence_head: str = "per_class"
    tau: float = 0.03
    loc_target: str = "paper"
    audio_grouping: str = "spatial"
    token_init_std: float = 0.02
    w_loc: float = 1.0
    w_token: float = 1.0
    w_audio_cls: float = 100.0
    w_visual_cls: float = 1.0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    def __post_init__(self) -> None:
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {self.assignment!r}")
        if self.presence_head not in ("shared", "per_class"):
            raise ValueError(f"presence_head must be 'shared' or 'per_class', got {self.presence_head!r}")
        if self.loc_target not in LOC_TARGETS:
            raise ValueError(f"loc_target must be one of {LOC_TARGETS}, got {self.loc_target!r}")
        if self.audio_grouping not in AUDIO_GROUPING:
            raise ValueError(f"audio_grouping must be one of {AUDIO_GROUPING}, got {self.audio_grouping!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.num_classes < 1 or self.tau <= 0:
            raise ValueError("num_classes must be >= 1 and tau > 0")
        _sync_encoder_dim(self)

    @property
    def audio_depth(self) -> int:
        return self.depth if self.depth_audio is None else self.depth_audio

    @property
    def visual_depth(self) -> int:
        return self.depth if self.depth_visual is None else self.depth_visual

    @classmethod
    def paper(cls, **overrides: Any) -> "AVGNConfig":
        """The paper's and released code's design exactly (C=37, D=512, depth 3, 8 heads, tau 0.03,
        ResNet-18, token residual, one shared presence head, every loss weight 1)."""
        return cls(**{**PAPER_DESIGN, **overrides})


class AVGN(AudioVisualModel):
    """Audio-Visual Grouping Network. See the module docstring."""

    label = "AVGN"

    def __init__(self, cfg: AVGNConfig | None = None) -> None:
        cfg = cfg or AVGNConfig()
        super().__init__(cfg)
        d, c = cfg.dim, cfg.num_classes
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
    def encode(self, image: torch.Tensor | None = None, spec: torch.Tensor | None = None,
               visual_feats: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Encoders only: ``visual_map_feats``, ``visual_backbone_feats``, ``audio_global``, ``audio_map_feats``."""
        vmap, vback = self.encode_frame(image, spec, visual_feats)
        a_glob, a_map = self.audio(spec)
        out = {"visual_map_feats": vmap, "visual_backbone_feats": vback, "audio_global": a_glob}
        if a_map is not None:
            out["audio_map_feats"] = a_map
        return out

    def forward(self, image: torch.Tensor | None = None, spec: torch.Tensor | None = None,
                visual_feats: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
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


def _fp32(x: torch.Tensor | None) -> torch.Tensor | None:
    """Half / bfloat16 -> float32; other dtypes (and None) unchanged (the model's heads and the
    contrastive scores, whose cosines over ``tau`` bf16 cannot resolve)."""
    return x.float() if x is not None and x.dtype in (torch.float16, torch.bfloat16) else x


def _init_transformer_weights(m: nn.Module) -> None:
    """ViT/GroupViT init (as the released code's ``_init_weights``)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _cos_max(num: torch.Tensor, den_sq: torch.Tensor | None, eps: float = 1e-8) -> torch.Tensor:
    if den_sq is not None:
        num = num / den_sq.clamp_min(eps * eps).sqrt()
    return num.amax(dim=-1)


def avgn_pair_scores(
    audio_emb: torch.Tensor,
    visual_feats: torch.Tensor,
    source_classes: torch.Tensor,
    source_mask: torch.Tensor,
    tau: float = 0.03,
    target: str = "paper",
    visual_emb: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores of every valid (sample ``i``, source class ``n``) pair ``p``.

    Args:
        audio_emb: ``[B, C, D]`` class-aware audio embeddings ``g^a``.
        visual_feats: ``[B, D, h, w]`` spatial visual features ``f``.
        source_classes / source_mask: ``[B, S]`` (see module docstring).
        target: the visual target of pair ``p`` in image ``j``: ``paper`` = ``t_{j,n,q} = f_{j,q} *
            g^v_{j,n}`` (needs ``visual_emb`` ``[B, C, D]``); ``public`` = the raw ``f_{j,q}``.

    Returns:
        ``(a2v [P, B], v2a [P, P], sample_index [P])`` for the ``P`` valid pairs (row-major order):

        * ``a2v[p, j] = max_q cos(g^a_p, t_{j, n_p, q}) / tau`` — the pair's audio against every
          image of the batch (positive ``j = i_p``);
        * ``v2a[p, p'] = max_q cos(g^a_{p'}, t_{i_p, n_p, q}) / tau`` — the pair's own target against
          the audio of every pair (positive ``p' = p``); the *other* sources of the same mixture are
          masked out (``-inf``), so negatives are the sources of the other samples. With one source
          per sample this is exactly EZ-VSL's audio/visual similarity matrix.
    """
    if target not in ("paper", "public"):
        raise ValueError(f"target must be 'paper' or 'public', got {target!r}")
    if target == "paper" and visual_emb is None:
        raise ValueError("target='paper' needs visual_emb [B, C, D]")
    with torch.autocast(audio_emb.device.type, enabled=False):  # fp32 scores, see _fp32
        return _pair_scores(_fp32(audio_emb), _fp32(visual_feats), source_classes, source_mask, tau, target, _fp32(visual_emb))


def _pair_scores(
    audio_emb: torch.Tensor,
    visual_feats: torch.Tensor,
    source_classes: torch.Tensor,
    source_mask: torch.Tensor,
    tau: float,
    target: str,
    visual_emb: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    valid = source_mask & (source_classes >= 0)
    rows, cols = valid.nonzero(as_tuple=True)
    cls = source_classes[rows, cols]  # [P]
    a = F.normalize(audio_emb, dim=-1)
    f = F.normalize(visual_feats.flatten(2), dim=1)  # [B, D, Q]
    a_sel = a[rows, cls]  # [P, D]  g^a_{i,n}
    if target == "public":
        a2v = _cos_max(torch.einsum("pd,jdq->pjq", a_sel, f), None)
        t_own = f[rows]  # [P, D, Q]
    else:
        g = visual_emb[:, cls].transpose(0, 1)  # [P, B, D]  g^v_{j,n} for every j
        # cos(a, f * g) = sum_d a_d g_d f_dq / ||f_q * g||  (never materialise f * g for all pairs)
        num = torch.einsum("pjd,jdq->pjq", a_sel[:, None] * g, f)
        den = torch.einsum("pjd,jdq->pjq", g * g, f * f)
        a2v = _cos_max(num, den)
        g_own = visual_emb[rows, cls]  # [P, D]  g^v_{i,n}
        t_own = F.normalize(f[rows] * g_own[:, :, None], dim=1)  # [P, D, Q]
    v2a = _cos_max(torch.einsum("kd,pdq->pkq", a_sel, t_own), None)
    same_sample = rows[:, None] == rows[None, :]
    other_source = same_sample & ~torch.eye(len(rows), dtype=torch.bool, device=rows.device)
    v2a = v2a.masked_fill(other_source, float("-inf"))
    return a2v / tau, v2a / tau, rows


def avgn_localization_loss(
    audio_emb: torch.Tensor,
    visual_feats: torch.Tensor,
    source_classes: torch.Tensor,
    source_mask: torch.Tensor,
    tau: float = 0.03,
    target: str = "paper",
    visual_emb: torch.Tensor | None = None,
    symmetric: bool = True,
) -> torch.Tensor:
    """Per-source max-MIL contrastive loss (paper Eq. 10 over multi-source batches).

    Mean over valid pairs of ``CE(a2v_p, i_p)`` (+ ``CE(v2a_p, p)`` if ``symmetric``; the two
    directions summed like EZ-VSL); see :func:`avgn_pair_scores`. With ``target='public'`` and
    exactly one source per sample this equals :func:`maxmil_contrastive_loss` on
    ``(g^a_{i, n_i}, f_i)``. Returns 0 (with a graph) when the
    batch has no valid source.
    """
    a2v, v2a, idx = avgn_pair_scores(audio_emb, visual_feats, source_classes, source_mask, tau, target, visual_emb)
    if idx.numel() == 0:
        return audio_emb.sum() * 0.0
    loss = F.cross_entropy(a2v, idx)
    if symmetric:
        loss = loss + F.cross_entropy(v2a, torch.arange(len(idx), device=idx.device))
    return loss


def avgn_loss_terms(outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any], cfg: Any) -> dict[str, torch.Tensor]:
    """AVGN's four loss terms, unweighted, with their graphs: ``loc`` (Eq. 10 per source,
    :func:`avgn_localization_loss`), ``token`` (:func:`token_ce_loss`), ``audio_cls`` and
    ``visual_cls`` (:func:`presence_bce_loss` on the multi-hot labels; ``visual_labels`` if the batch
    has them). ``batch``: ``labels [B, C]`` and ``source_classes`` / ``source_mask`` ``[B, S]``
    (derived from the labels when absent)."""
    labels = batch["labels"].to(outputs["audio_logits"].dtype)
    visual_labels = batch.get("visual_labels")
    visual_labels = labels if visual_labels is None else visual_labels.to(labels.dtype)
    if batch.get("source_classes") is not None:
        source_classes = batch["source_classes"]
        source_mask = batch.get("source_mask")
        if source_mask is None:
            source_mask = source_classes >= 0
    else:
        source_classes, source_mask = sources_from_multihot(labels)
    loc = avgn_localization_loss(
        outputs["audio_emb"],
        outputs["visual_map_feats"],
        source_classes,
        source_mask,
        tau=cfg.tau,
        target=cfg.loc_target,
        visual_emb=outputs["visual_emb"],
    )
    return {
        "loc": loc,
        "token": token_ce_loss(outputs["token_logits"]),
        "audio_cls": presence_bce_loss(outputs["audio_logits"], labels),
        "visual_cls": presence_bce_loss(outputs["visual_logits"], visual_labels),
    }


def avgn_total_loss(
    outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any], cfg: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted AVGN loss. ``cfg`` is an :class:`avgn.models.config.AVGNConfig`.

    ``loss = w_loc * L_loc + w_token * L_token + w_audio_cls * L_audio + w_visual_cls * L_visual``
    (terms from :func:`avgn_loss_terms`).
    Returns ``(loss, {"loc", "token", "audio_cls", "visual_cls", "total"})`` (parts detached).
    """
    t = avgn_loss_terms(outputs, batch, cfg)
    total = cfg.w_loc * t["loc"] + cfg.w_token * t["token"] + cfg.w_audio_cls * t["audio_cls"] + cfg.w_visual_cls * t["visual_cls"]
    parts = {**t, "total": total}
    return total, {k: v.detach() for k, v in parts.items()}


def map_target(cfg: Any) -> str:
    """The AVGN map that matches its training loss: ``gated`` (``cos(g^a_c, f_p * g^v_c)``, the
    paper's Eq. 10) when trained with ``loc_target='paper'``, ``features`` (``cos(g^a_c, f_p)``) when
    trained with the released code's ``loc_target='public'``. Scoring a ``paper``-trained model with
    the ungated map evaluates a similarity it was never trained on (on the smoke run: val AP 0.23
    ungated vs 0.43 gated)."""
    return "gated" if getattr(cfg, "loc_target", "public") == "paper" else "features"


def embedding_dependence(emb: np.ndarray, sounding: np.ndarray, names: Sequence[str]):
    """How much class-aware embeddings ``emb [N, C, D]`` depend on the input: per class, the cosine
    similarity between its mean embedding over scenes where it sounds and over scenes where it does
    not (``cos_sounding_vs_silent``: 1 = the embedding ignores whether the class sounds), and the
    mean cosine similarity of single embeddings to their class mean (``within_class_cos``: 1 = the
    same vector for every input). Returns a :class:`pandas.DataFrame`, one row per class that both
    sounds and is silent somewhere."""
    import pandas as pd

    x = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    rows = []
    for c, name in enumerate(names):
        on, off = sounding[:, c], ~sounding[:, c]
        if not on.any() or not off.any():
            continue
        mu_on, mu_off = x[on, c].mean(0), x[off, c].mean(0)
        mu_all = x[:, c].mean(0)
        cos = float(mu_on @ mu_off / (np.linalg.norm(mu_on) * np.linalg.norm(mu_off)))
        within = float((x[:, c] @ (mu_all / np.linalg.norm(mu_all))).mean())
        rows.append({"class": name, "scenes_sounding": int(on.sum()), "cos_sounding_vs_silent": cos, "within_class_cos": within})
    return pd.DataFrame(rows)


#: Roles of a class in a scene (:func:`embedding_dependence_by_role`, :func:`avgnbook.analysis.embedding_roles`).
ABSENT, VISIBLE_SILENT, SOUNDING = 0, 1, 2


def embedding_dependence_by_role(emb: np.ndarray, roles: np.ndarray, names: Sequence[str]):
    """:func:`embedding_dependence` with silence split in two: per class, the cosine similarity
    between its mean embeddings over the scenes where it sounds, where it is pasted in the frame but
    silent (a distractor) and where it is absent. ``emb [N, C, D]``, ``roles [N, C]`` with
    :data:`SOUNDING` / :data:`VISIBLE_SILENT` / :data:`ABSENT`.

    An embedding that follows what its modality can perceive has, for the audio branch,
    ``cos_sounding_vs_visible_silent`` low and ``cos_visible_silent_vs_absent`` near 1 (a silent
    object is not heard), and for the visual branch ``cos_sounding_vs_visible_silent`` near 1 (a
    frame does not show which object sounds) and ``cos_visible_silent_vs_absent`` low. Returns a
    :class:`pandas.DataFrame`, one row per class, NaN where a role never occurs."""
    import pandas as pd

    roles = np.asarray(roles)
    if roles.shape != emb.shape[:2]:
        raise ValueError(f"roles {roles.shape} do not match the embeddings' [N, C] {emb.shape[:2]}")
    x = emb / np.linalg.norm(emb, axis=-1, keepdims=True)

    def cos(u: np.ndarray | None, v: np.ndarray | None) -> float:
        if u is None or v is None:
            return math.nan
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    rows = []
    for c, name in enumerate(names):
        mu = {r: (x[roles[:, c] == r, c].mean(0) if (roles[:, c] == r).any() else None) for r in (SOUNDING, VISIBLE_SILENT, ABSENT)}
        rows.append({"class": name, "scenes_sounding": int((roles[:, c] == SOUNDING).sum()),
                     "scenes_visible_silent": int((roles[:, c] == VISIBLE_SILENT).sum()), "scenes_absent": int((roles[:, c] == ABSENT).sum()),
                     "cos_sounding_vs_visible_silent": cos(mu[SOUNDING], mu[VISIBLE_SILENT]),
                     "cos_sounding_vs_absent": cos(mu[SOUNDING], mu[ABSENT]),
                     "cos_visible_silent_vs_absent": cos(mu[VISIBLE_SILENT], mu[ABSENT])})
    return pd.DataFrame(rows)


@torch.no_grad()
def embedding_dependence_summary(model: nn.Module, batches: Sequence[Mapping[str, Any]], device: str | torch.device = "cpu") -> dict[str, float]:
    """Mean over classes of :func:`embedding_dependence`'s ``cos_sounding_vs_silent`` for AVGN's
    audio and visual class-aware embeddings on ``batches`` (e.g. the materialised validation duets):
    1 = the embedding of a class is the same whether the class sounds or not."""
    was = model.training
    model.eval()
    auds, viss, labs = [], [], []
    try:
        for b in batches:
            out = model(**model_inputs(dict(b), torch.device(device)))
            auds.append(out["audio_emb"].float().cpu())
            viss.append(out["visual_emb"].float().cpu())
            labs.append(b["labels"].bool())
    finally:
        model.train(was)
    sounding = torch.cat(labs).numpy()
    names = [str(c) for c in range(sounding.shape[1])]
    res = {}
    for key, embs in (("audio", auds), ("visual", viss)):
        df = embedding_dependence(torch.cat(embs).numpy(), sounding, names)
        res[key] = float(df["cos_sounding_vs_silent"].mean()) if len(df) else math.nan
    return res


@register_method
class AVGNMethod(Method):
    """AVGN: class tokens, grouping, class-aware embeddings (:class:`avgn.methods.avgn.AVGN`)."""

    name = "avgn"
    label = "AVGN"
    kind = "class_aware"
    modes = ("oracle", "predicted")
    trains_on_negatives = True
    config_cls = AVGNConfig

    def default_config(self, profile: "Profile") -> AVGNConfig:
        s = profile.sizes
        return AVGNConfig(dim=s.dim, depth=s.depth, heads=s.heads, mlp_ratio=s.mlp_ratio, encoder=profile.encoder)

    def build(self, cfg: AVGNConfig) -> AVGN:
        return AVGN(cfg)

    def loss(self, model: nn.Module, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Eq. 10 + token CE + audio / visual presence BCE (:func:`avgn.losses.avgn_total_loss`)."""
        dev = outputs["audio_logits"].device
        classes = batch["classes"].to(dev)
        b = {"labels": batch["labels"].to(dev), "source_classes": classes, "source_mask": classes >= 0}
        return avgn_total_loss(outputs, b, model.cfg)

    def predict(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {
            "maps": model.localize(outputs, target=map_target(model.cfg)),  # [B, C, h, w]
            "audio_probs": torch.sigmoid(outputs["audio_logits"]),  # [B, C]
            "token_pred": model.token_classifier(outputs["audio_emb"]).argmax(-1),  # [B, C]
        }

    def epoch_diagnostics(self, model: nn.Module, val_sets: Sequence[Any], device: torch.device) -> dict[str, Any]:
        """``token_raw_accuracy`` (is token ``c`` classified as ``c``?) and ``embedding_dependence``
        (does a class's embedding change when the class sounds? 1 = no; on the multi-source
        validation sets)."""
        with torch.no_grad():
            tok = model.token_classifier(model.class_tokens).argmax(-1).cpu()
        multi = [es for es in val_sets if es.name.n_sources > 1] or list(val_sets)
        return {
            "token_raw_accuracy": float((tok == torch.arange(len(tok))).float().mean()),
            "embedding_dependence": embedding_dependence_summary(model, [b for es in multi for b in es.batches()], device),
        }

    def value_label(self, model: nn.Module | None) -> str:
        if model is not None and map_target(model.cfg) == "gated":
            return "cos(g$^a_c$, f$_p$ ⊙ g$^v_c$): class-c audio token vs. gated pixel feature"
        return "cos(g$^a_c$, f$_p$): class-c audio token vs. pixel feature"
