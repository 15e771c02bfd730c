"""DSOL (Hu et al., NeurIPS 2020) as a method: two stages through the shared engine.

**Stage 1** (``model.stage=1``, single-source scenes): audio-visual correspondence — the global max
of ``sigmoid(w cos(v, a))`` is scored by BCE against 1 for the matched frame and 0 for a mismatched
one (the next item of the batch). From the second epoch on, before each epoch
(:meth:`DSOLMethod.on_epoch_start`): every training frame's object feature (the mean backbone
feature inside its localised region, map > 0.05, dilated) is computed with the current model,
K-means (seeded by run and epoch) gives the dictionary, and the clusters are mapped to classes once
per clustering on the validation single-source scenes (Hungarian; the purity is logged). During the
epoch, audio and visual pseudo-label heads are trained on each item's cluster (the dictionary centre
nearest to its object feature, i.e. the K-means assignment), with weight ``cls_weight``; with
``mix_weight > 0`` (this book's default, not the public code's) the audio head also learns two-item
mixtures of the batch's sounds — a soft target of half each item's cluster — so that the classifier
stage 2 and the predicted selection read on mixtures has seen one (chapter 7: trained on single
sounds only, its softmax picks one class of a duet, and both in only one duet in ten).

**Stage 2** (``model.stage=2``, mixtures; initialised from a stage-1 run with ``train.init_from``):
class-aware maps ``[B, K, h, w]`` from the dictionary times the audio-visual map; the visual category
distribution (softmax of their spatial means) must match the audio one (softmax of a frozen copy of
the stage-1 audio network and classifier, :class:`AudioTeacher`, as the public code's ``av_model_fix``) in KL, plus ``loc_weight`` x the location loss (BCE of the matched
map's global max against 1, of the mismatched map's 2x2 max-pooled cells against 0, averaged).

**Inference**: ``softmax(softmax_scale * class maps)`` over the clusters, each cluster's map put at
its mapped class (unmatched clusters and classes without a cluster have no map: zeros), and the
audio category distribution as the classes' presence probabilities — so ``predicted`` selection
picks the sounding objects from the audio, never from labels.

Departures from the public code (documented in chapter 7): the pseudo-label heads are trained online
during the epoch instead of in three extra passes after clustering; the mismatched frame is the next
item of the batch, not a random one.

The model
---------

DSOL (Hu, Qian, Wen, Sun, Wang, Wang, NeurIPS 2020) on this project's encoders.

* Audio-visual map ``av = sigmoid(w * cos(v_p, a))`` (``[B, h, w]``) between the L2-normalised visual
  projection ``v`` ``[B, D, h, w]`` and the audio embedding ``a`` ``[B, D]``; ``w`` is learned (init 5).
* A dictionary of object categories ``[K, C']`` (buffer): the K-means centres of the backbone features
  of localised objects (:mod:`avgn.clusters`), set by the method between epochs; ``cluster_to_class``
  ``[K]`` (buffer) maps the clusters onto the label set (Hungarian, on validation).
* Pseudo-label heads: ``audio_head`` (max-pooled audio trunk -> K) and ``visual_head`` (average-pooled
  backbone features -> K).
* Class-aware maps ``[B, K, h, w]`` = ``(s * cos(f_p, d_k) + b) * av_p`` with a learned affine
  ``(s, b)`` — the public code's 1x1x1 Conv3d over the ``K`` similarity maps.

The losses live in :mod:`avgn.methods.dsol` (they depend on the stage).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avgn.clusters import CLUSTER_MAPPINGS, kmeans_dictionary, masked_object_features
from avgn.env import epoch_seed
from avgn.losses import maxmil_contrastive_loss
from avgn.methods.base import EpochContext, Method, model_inputs
from avgn.methods.registry import register_method

if TYPE_CHECKING:  # pragma: no cover
    from avgn.config import Profile
from dataclasses import dataclass, field

from avgn.models.config import EncoderConfig, _sync_encoder_dim
from avgn.models.encoders import AudioEncoder, AudioVisualModel

__all__ = ['DSOLMethod', 'object_features', 'object_region_maps', 'stage1_loss', 'stage2_loss', 'DSOL', 'DSOLConfig', 'AVC_LOSSES',
           'REGION_RULES', 'CLUSTER_FEATURES', 'RECLUSTER', 'PUBLIC_DESIGN']


#: Stage 1's correspondence loss (:attr:`DSOLConfig.avc_loss`).
AVC_LOSSES = ("bce", "infonce")
#: How an object's region is cut from the map (:attr:`DSOLConfig.region_rule`).
REGION_RULES = ("absolute", "relative")
#: What K-means clusters (:attr:`DSOLConfig.cluster_features`).
CLUSTER_FEATURES = ("backbone", "projection")

#: How each epoch's K-means starts (:attr:`DSOLConfig.recluster`).
RECLUSTER = ("fresh", "warm")

#: How clusters are named with classes (:attr:`DSOLConfig.cluster_mapping`; :data:`avgn.clusters.CLUSTER_MAPPINGS`).
CLUSTER_MAPPING_RULES = ("hungarian", "majority")

#: The public code's choices for the fields where this book's defaults depart from it.
PUBLIC_DESIGN = {"avc_loss": "bce", "region_rule": "absolute", "cluster_features": "backbone", "recluster": "fresh", "dilate": 1,
                 "mix_weight": 0.0}


@dataclass(frozen=True)
class DSOLConfig:
    """DSOL (Hu et al., NeurIPS 2020): two-stage class-aware localization from object clusters.

    Attributes:
        stage: 1 = audio-visual correspondence on single-source scenes (from the second epoch on,
            object clusters and pseudo-label classifiers); 2 = class-aware maps on mixtures,
            audio and visual category distributions matched (KL) plus the location loss.
        num_classes: the label set the clusters are mapped onto (set from the data).
        num_clusters: ``K`` (None: ``num_classes``; the public code uses 11 for MUSIC's 11 classes).
        dim: embedding dimension of the audio-visual correspondence (public: 128).
        map_scale_init: initial value of the learned scale ``w`` of ``sigmoid(w cos(v, a))`` (public: 5).
        region_threshold / dilate: an object's region is the map above this value, grown by its
            4-neighbours ``dilate`` times (public: 0.05, once; here 0 times by default: one
            4-neighbour step of a 7 x 7 map adds most of the frame around a small object, and the
            purity of the clusters falls with it — chapter 7).
        cls_weight: weight of the pseudo-label classification of stage 1 (audio and visual heads).
        kl_weight / loc_weight: stage 2's ``kl_weight * KL + loc_weight * (BCE_pos + BCE_neg) / 2``
            (public: 1 and 0.5).
        softmax_scale: class maps at inference are ``softmax(softmax_scale * maps)`` over the
            clusters (public: 3).
        mix_weight: weight of stage 1's mixture pseudo-label loss (0 = the public code: the audio
            classifier sees single sounds only). Each item's spectrogram is mixed with the previous
            item's (magnitudes added: ``logaddexp`` of the log-magnitudes, the second at a relative
            gain uniform in +-``mix_gain_db`` dB) and the audio head is trained on the soft target
            ``(onehot(c_i) + onehot(c_j)) / 2`` of the two items' clusters.
        mix_gain_db: the relative gain range of those mixtures (the data's sources: +-6 dB each).
        avc_loss: stage 1's audio-visual correspondence: ``bce`` = the public code (the global max
            of ``sigmoid(w cos)`` against 1 for the own frame, 0 for one other frame) or ``infonce``
            (default) = the max-MIL contrastive loss of EZ-VSL over the batch, temperature
            ``avc_tau``. With this book's frozen backbone the public form stays at its chance value
            ``2 ln 2`` for every epoch and its map comes out *inverted* (lowest on the object:
            chapter 7's diagnosis), so the clusters it feeds are of background.
        region_rule: how an object's region is cut from the map: ``absolute`` = ``map >
            region_threshold`` (public: 0.05 on ``sigmoid(w cos)``, which with ``w = 5`` keeps every
            cell whose cosine exceeds -0.59, i.e. the whole frame) or ``relative`` (default) =
            the min-max normalised map above ``relative_threshold`` (0.9: the cells near the peak);
            both dilated ``dilate`` times.
        cluster_features: what K-means clusters: ``backbone`` = the backbone features in the region
            (public: the ResNet's layer 4, which trains with the correspondence) or ``projection``
            (default) = the trained audio-visual projection of those features. This book's backbone
            is frozen, so its trainable part is the projection: clustering it keeps what the public
            code relies on, features shaped by the sounds.
        recluster: each epoch's K-means starts ``fresh`` (public: new k-means++ draws, so cluster
            ids are reshuffled and the pseudo-label heads start over) or ``warm`` (default) from the
            previous dictionary, so cluster ``j`` stays cluster ``j`` and the heads keep learning.
        cluster_mapping: how the clusters are named with classes after each clustering, on the
            validation objects: ``hungarian`` (default: one-to-one, :func:`avgn.clusters.hungarian_mapping`)
            or ``majority`` (each cluster its majority class, :func:`avgn.clusters.majority_mapping`;
            with ``num_clusters`` above the class count, over-clustering, a class split over several
            clusters keeps them all). A class's presence probability is the sum of its clusters'
            audio probabilities and its map the highest of their maps.
    """

    stage: int = 1
    num_classes: int = 37
    num_clusters: int | None = None
    dim: int = 128
    map_scale_init: float = 5.0
    region_threshold: float = 0.05
    dilate: int = 0
    cls_weight: float = 1.0
    kl_weight: float = 1.0
    loc_weight: float = 0.5
    softmax_scale: float = 3.0
    mix_weight: float = 1.0
    mix_gain_db: float = 6.0
    avc_loss: str = "infonce"
    avc_tau: float = 0.1
    region_rule: str = "relative"
    relative_threshold: float = 0.9
    cluster_features: str = "projection"
    recluster: str = "warm"
    cluster_mapping: str = "hungarian"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    #: fields added after runs were stored, with the value those runs trained with: left out of the
    #: experiment's fingerprint at that value (:meth:`avgn.experiment.Experiment.fingerprint_json`)
    fingerprint_defaults = {"cluster_mapping": "hungarian"}

    def __post_init__(self) -> None:
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.num_clusters is not None and self.num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, got {self.num_clusters}")
        if not 0.0 <= self.region_threshold < 1.0 or not 0.0 <= self.relative_threshold < 1.0:
            raise ValueError("region_threshold and relative_threshold must lie in [0, 1)")
        for name, value, allowed in (("avc_loss", self.avc_loss, AVC_LOSSES), ("region_rule", self.region_rule, REGION_RULES),
                                     ("cluster_features", self.cluster_features, CLUSTER_FEATURES), ("recluster", self.recluster, RECLUSTER),
                                     ("cluster_mapping", self.cluster_mapping, CLUSTER_MAPPING_RULES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.avc_tau <= 0:
            raise ValueError(f"avc_tau must be > 0, got {self.avc_tau}")
        if self.mix_weight < 0 or self.mix_gain_db < 0:
            raise ValueError(f"mix_weight and mix_gain_db must be >= 0, got {self.mix_weight}, {self.mix_gain_db}")
        _sync_encoder_dim(self)

    @property
    def k(self) -> int:
        """The number of clusters ``K``."""
        return self.num_clusters or self.num_classes

    @property
    def region_cut(self) -> float:
        """The threshold of :func:`object_region_maps`' output (absolute or relative)."""
        return self.region_threshold if self.region_rule == "absolute" else self.relative_threshold


def object_region_maps(av: Tensor, rule: str) -> Tensor:
    """The map whose cells above :attr:`DSOLConfig.region_cut` form an object's region: ``av [N, h, w]``
    itself (``absolute``) or min-max normalised per frame (``relative``)."""
    if rule == "absolute":
        return av
    flat = av.flatten(1)
    lo, hi = flat.amin(1)[:, None, None], flat.amax(1)[:, None, None]
    return (av - lo) / (hi - lo).clamp_min(1e-12)


class AudioTeacher(nn.Module):
    """Stage 2's frozen copy of the stage-1 audio network and cluster classifier: ``spec [B, 1, F, T]``
    -> cluster logits ``[B, K]``, without gradient and always in evaluation mode (its batch-norm
    statistics stay stage 1's). Its weights come from the stage-1 run (:meth:`DSOL.complete_state_dict`)."""

    def __init__(self, enc: EncoderConfig, k: int) -> None:
        super().__init__()
        self.audio = AudioEncoder(enc, spatial=False)
        self.head = nn.Linear(self.audio.out_channels, k)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "AudioTeacher":  # frozen: evaluation mode whatever the parent's
        return super().train(False)

    @torch.no_grad()
    def forward(self, spec: Tensor) -> Tensor:
        _, pooled = self.audio.trunk_pooled(spec)
        return self.head(pooled)


class DSOL(AudioVisualModel):
    """``forward`` -> dict (see the module docstring); ``has_dictionary`` once clusters exist."""

    label = "DSOL"

    def __init__(self, cfg: DSOLConfig | None = None) -> None:
        cfg = cfg or DSOLConfig()
        super().__init__(cfg)
        self.audio = AudioEncoder(cfg.encoder, spatial=False)
        self.scale = nn.Parameter(torch.tensor(float(cfg.map_scale_init)))
        k = cfg.k
        feat_dim = self.visual.backbone_channels if cfg.cluster_features == "backbone" else cfg.dim
        self.audio_head = nn.Linear(self.audio.out_channels, k)
        self.visual_head = nn.Linear(feat_dim, k)
        self.class_affine = nn.Parameter(torch.tensor([1.0, 0.0]))
        self.register_buffer("dictionary", torch.zeros(k, feat_dim))
        self.register_buffer("cluster_to_class", torch.full((k,), -1, dtype=torch.long))
        # stage 2: the stage-1 audio network and classifier, a frozen copy, give the target distribution
        # (the public code's av_model_fix); stage 2's own audio trunk trains on, and a frozen head on a
        # trunk that moves would drift (version 2: solo presence F1 0.79 after stage 1, 0.50 after stage 2)
        self.audio_teacher = AudioTeacher(cfg.encoder, k) if cfg.stage == 2 else None
        if cfg.stage == 2:
            for p in self.audio_head.parameters():
                p.requires_grad_(False)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"stage={c.stage}, clusters={c.k}, classes={c.num_classes}, avc_loss={c.avc_loss}, region_rule={c.region_rule}, "
                f"region_cut={c.region_cut}, cluster_features={c.cluster_features}, recluster={c.recluster}, mix_weight={c.mix_weight}")

    def complete_state_dict(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Weights of a stage-1 run loaded into stage 2 (``train.init_from``): the frozen teacher is the
        stage-1 audio network and classifier (``audio.*``, ``audio_head.*``); weights that hold it already
        (a stage-2 checkpoint) are returned unchanged."""
        if self.audio_teacher is None or any(k.startswith("audio_teacher.") for k in sd):
            return sd
        out = dict(sd)
        for k, v in sd.items():
            if k.startswith("audio."):
                out["audio_teacher.audio." + k[len("audio."):]] = v
            elif k.startswith("audio_head."):
                out["audio_teacher.head." + k[len("audio_head."):]] = v
        return out

    @property
    def has_dictionary(self) -> bool:
        return bool(self.dictionary.abs().sum() > 0)

    def set_dictionary(self, centres: torch.Tensor) -> None:
        """Install K-means centres ``[K, C']`` as the dictionary."""
        if centres.shape != self.dictionary.shape:
            raise ValueError(f"dictionary must be {tuple(self.dictionary.shape)}, got {tuple(centres.shape)}")
        self.dictionary.copy_(centres.to(self.dictionary))

    def set_mapping(self, cluster_to_class: torch.Tensor) -> None:
        """Install the cluster -> class mapping ``[K]`` (-1: unmatched)."""
        self.cluster_to_class.copy_(cluster_to_class.to(self.cluster_to_class))

    def av_map(self, audio_emb: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """``sigmoid(w cos(v_p, a))`` ``[B, h, w]`` for aligned rows of ``audio_emb`` and ``visual``."""
        return torch.sigmoid(self.scale * torch.einsum("bd,bdhw->bhw", audio_emb, visual))

    def forward(self, image: torch.Tensor | None = None, spec: torch.Tensor | None = None,
                visual_feats: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        vmap, vback = self.encode_frame(image, spec, visual_feats)
        _, pooled = self.audio.trunk_pooled(spec)
        a = F.normalize(self.audio.proj(self.audio.dropout(pooled)), dim=1)
        av = self.av_map(a, vmap)
        cf = vback.float() if self.cfg.cluster_features == "backbone" else vmap.float()  # [B, C'|D, h, w]
        logits = self.audio_head(pooled) if self.audio_teacher is None else self.audio_teacher(spec)
        out = {"audio_emb": a, "visual_map_feats": vmap, "visual_backbone_feats": vback, "av_map": av, "cluster_feats": cf,
               "audio_cluster_logits": logits, "visual_cluster_logits": self.visual_head(cf.mean(dim=(2, 3)))}
        sim = torch.einsum("bchw,kc->bkhw", F.normalize(cf, dim=1), F.normalize(self.dictionary, dim=1))
        out["class_maps"] = (self.class_affine[0] * sim + self.class_affine[1]) * av[:, None]  # [B, K, h, w]
        if self.training and self.cfg.stage == 1 and self.cfg.mix_weight > 0 and self.has_dictionary and len(spec) > 1:
            out["mix_cluster_logits"] = self.audio_head(self.audio.trunk_pooled(mix_with_next(spec, self.cfg.mix_gain_db))[1])
        return out


#: The public code's embedding width (smaller profiles shrink it).
PUBLIC_DIM = 128


def mix_with_next(spec: Tensor, gain_db: float) -> Tensor:
    """Each item's log-magnitude spectrogram ``spec [B, 1, F, T]`` mixed with the previous item's (the
    first with the last): magnitudes added, ``logaddexp(s_i, s_{i-1} + g)``, with the second's relative
    gain ``g`` drawn uniform in +-``gain_db`` dB per item (as a log-magnitude offset, ``g ln(10) / 20``)."""
    g = (torch.rand(len(spec), 1, 1, 1, device=spec.device, dtype=spec.dtype) * 2 - 1) * (gain_db * math.log(10.0) / 20.0)
    return torch.logaddexp(spec, spec.roll(1, dims=0) + g)


def _mismatched(out: Mapping[str, Tensor], model: DSOL) -> Tensor:
    """The audio-visual map of each item's audio against the *next* item's frame ``[B, h, w]``."""
    return model.av_map(out["audio_emb"], out["visual_map_feats"].roll(1, dims=0))


def stage1_loss(model: DSOL, out: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Correspondence (``avc_loss``: BCE or max-MIL InfoNCE) + pseudo-label CE once the dictionary exists."""
    if model.cfg.avc_loss == "bce":
        pos = out["av_map"].flatten(1).amax(1).float().clamp(1e-6, 1 - 1e-6)
        neg = _mismatched(out, model).flatten(1).amax(1).float().clamp(1e-6, 1 - 1e-6)
        avc = F.binary_cross_entropy(pos, torch.ones_like(pos)) + F.binary_cross_entropy(neg, torch.zeros_like(neg))
    else:
        avc, _ = maxmil_contrastive_loss(out["audio_emb"].float(), out["visual_map_feats"].float(), model.cfg.avc_tau, normalize=False)
    parts = {"avc": avc}
    total = avc
    if model.has_dictionary:
        with torch.no_grad():
            obj = masked_object_features(out["cluster_feats"].float(), object_region_maps(out["av_map"].float(), model.cfg.region_rule),
                                         model.cfg.region_cut, model.cfg.dilate)
            pseudo = (F.normalize(obj.feats, dim=1) @ F.normalize(model.dictionary, dim=1).t()).argmax(1)
        cls = F.cross_entropy(out["audio_cluster_logits"].float(), pseudo) + F.cross_entropy(out["visual_cluster_logits"].float(), pseudo)
        parts["pseudo_cls"] = cls
        total = total + model.cfg.cls_weight * cls
        if "mix_cluster_logits" in out:  # the item's sound mixed with the previous item's: half of each cluster
            k = model.cfg.k
            target = 0.5 * (F.one_hot(pseudo, k) + F.one_hot(pseudo.roll(1, dims=0), k)).float()
            mix = F.cross_entropy(out["mix_cluster_logits"].float(), target)
            parts["mix_cls"] = mix
            total = total + model.cfg.mix_weight * mix
    parts["total"] = total
    return total, {k: v.detach() for k, v in parts.items()}


def stage2_loss(model: DSOL, out: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """KL(audio categories || visual categories) + loc_weight * (BCE_pos + BCE_neg) / 2."""
    if not model.has_dictionary:
        raise RuntimeError("DSOL stage 2 needs the stage-1 dictionary: train with train.init_from=<a finished stage-1 run>")
    target = F.softmax(out["audio_cluster_logits"].float().detach(), dim=1)
    log_q = F.log_softmax(out["class_maps"].float().mean(dim=(2, 3)), dim=1)
    kl = F.kl_div(log_q, target, reduction="batchmean")
    pos = out["av_map"].flatten(1).amax(1).float().clamp(1e-6, 1 - 1e-6)
    neg = F.max_pool2d(_mismatched(out, model)[:, None].float(), 2, ceil_mode=True).flatten(1).clamp(1e-6, 1 - 1e-6)
    loc = 0.5 * (F.binary_cross_entropy(pos, torch.ones_like(pos)) + F.binary_cross_entropy(neg, torch.zeros_like(neg)))
    total = model.cfg.kl_weight * kl + model.cfg.loc_weight * loc
    return total, {"kl": kl.detach(), "loc": loc.detach(), "total": total.detach()}


@torch.no_grad()
def object_features(model: DSOL, batches: Any, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``(features [N, C'], classes [N], empty [N])`` of the single-source items of ``batches`` (their
    first source's class); multi-source items are skipped."""
    was = model.training
    model.eval()
    feats, classes, empty = [], [], []
    try:
        for b in batches:
            single = (b["classes"] >= 0).sum(1) == 1
            if not single.any():
                continue
            out = model(**model_inputs(b, device))
            obj = masked_object_features(out["cluster_feats"].float().cpu(), object_region_maps(out["av_map"].float().cpu(), model.cfg.region_rule),
                                         model.cfg.region_cut, model.cfg.dilate)
            feats.append(obj.feats[single])
            classes.append(b["classes"][single, 0].long())
            empty.append(obj.empty[single])
    finally:
        model.train(was)
    if not feats:
        raise ValueError("no single-source items to extract objects from (DSOL's stage 1 needs train.solo_items > 0)")
    return torch.cat(feats), torch.cat(classes), torch.cat(empty)


@register_method
class DSOLMethod(Method):
    """Two-stage class-aware localization that filters silent objects."""

    name = "dsol"
    label = "DSOL"
    kind = "class_aware"
    modes = ("oracle", "predicted")
    config_cls = DSOLConfig
    #: 2: the correspondence, region, clustered features and re-clustering flags (PUBLIC_DESIGN keeps version 1's design);
    #: 3: stage 2's target distribution from a frozen copy of the stage-1 audio network (:class:`AudioTeacher`);
    #: 4: stage 1's audio classifier also learns mixtures (``mix_weight``)
    version = 4

    def training_version(self, cfg: DSOLConfig) -> int:
        """Stage 1 trains as in version 2 without mixtures (version 3 changed stage 2 only, version 4
        stage 1's mixtures); stage 2 trains as in version 3."""
        if cfg.stage == 1:
            return self.version if cfg.mix_weight > 0 else 2
        return 3

    def first_stage_prefixes(self, cfg: DSOLConfig) -> tuple[str, ...]:
        """Stage 2's frozen audio teacher is stage 1's audio network and classifier (:class:`AudioTeacher`)."""
        return ("audio_teacher.",) if cfg.stage == 2 else ()

    def default_config(self, profile: "Profile") -> DSOLConfig:
        return DSOLConfig(dim=min(profile.sizes.dim, PUBLIC_DIM), encoder=profile.encoder)

    def build(self, cfg: DSOLConfig) -> DSOL:
        return DSOL(cfg)

    def loss(self, model: nn.Module, outputs: Mapping[str, Tensor], batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        return stage1_loss(model, outputs) if model.cfg.stage == 1 else stage2_loss(model, outputs)

    def on_epoch_start(self, model: nn.Module, epoch: int, ctx: EpochContext) -> dict[str, Any]:
        """Stage 1, from the second epoch: cluster the training objects, map clusters to classes on
        the validation single-source scenes. Stage 2: check the dictionary is there."""
        if model.cfg.stage == 2:
            if not model.has_dictionary:
                raise RuntimeError("DSOL stage 2 needs the stage-1 dictionary: set train.init_from to a finished stage-1 run")
            return {}
        if epoch < 1:
            return {}
        feats, _, empty = object_features(model, ctx.train_batches(), ctx.device)
        warm = model.cfg.recluster == "warm" and model.has_dictionary
        centres, _ = kmeans_dictionary(feats, model.cfg.k, seed=epoch_seed(ctx.seed, epoch, 11) % 2**31,
                                       init=model.dictionary.cpu() if warm else None)
        model.set_dictionary(centres)
        vf, vc, _ = object_features(model, [b for es in ctx.val_sets for b in es.batches()], ctx.device)
        assign = (F.normalize(vf, dim=1) @ F.normalize(model.dictionary.cpu(), dim=1).t()).argmax(1)
        mapping = CLUSTER_MAPPINGS[model.cfg.cluster_mapping](assign, vc, model.cfg.k, model.cfg.num_classes)
        model.set_mapping(mapping.cluster_to_class)
        return {"cluster_purity": mapping.purity, "cluster_accuracy": mapping.accuracy, "objects": int(len(feats)),
                "empty_regions": float(empty.float().mean())}

    def predict(self, model: nn.Module, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        cm = F.softmax(model.cfg.softmax_scale * outputs["class_maps"].float(), dim=1)  # [B, K, h, w]
        pk = F.softmax(outputs["audio_cluster_logits"].float(), dim=1)  # [B, K]
        b, _, h, w = cm.shape
        c = model.cfg.num_classes
        maps = cm.new_zeros(b, c, h, w)
        probs = pk.new_zeros(b, c)
        m = model.cluster_to_class
        ok = m >= 0
        if ok.any():  # a class's clusters (one, or several with the majority mapping): their highest map, their summed probability
            idx = m[ok].view(1, -1, 1, 1).expand(b, -1, h, w)
            maps.scatter_reduce_(1, idx, cm[:, ok], "amax", include_self=False)
            probs.index_add_(1, m[ok], pk[:, ok])
        return {"maps": maps, "audio_probs": probs}

    def value_label(self, model: nn.Module | None) -> str:
        return "softmax over clusters of the class-aware map (cluster mapped to its class)"
